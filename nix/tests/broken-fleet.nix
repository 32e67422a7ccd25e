# A fleet the server must refuse (`landfall serve --check-config` exits 1): a
# machine names a role that does not exist. nixcheck asserts the refusal, so the
# sample fleet's success is not an accident of a check that accepts anything.
import ./sample-fleet.nix // {
  machines = {
    ws-01 = {
      mac = "52:54:00:12:01:01";
      role = "no-such-role";
    };
  };
}
