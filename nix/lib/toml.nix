# A TOML writer from builtins only (no nixpkgs), so `nix-instantiate --eval` can
# render landfall.toml on a machine without a nixpkgs checkout (see nixcheck).
#
#   import ./toml.nix { server.public_url = "http://10.0.0.1:8080"; machines = [ { mac = "..."; } ]; }
#
# null values are left out. Attribute sets become tables, lists of attribute sets
# arrays of tables; strings are written as JSON strings, which are valid TOML basic
# strings (the same escapes). Keys are sorted, as `builtins.attrNames` returns them.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    filter
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isPath
    isString
    map
    match
    toJSON
    typeOf
    ;

  isTableArray = v: isList v && v != [ ] && all isAttrs v;

  key = k: if match "[A-Za-z0-9_-]+" k != null then k else toJSON k;

  header = path: concatStringsSep "." (map key path);

  value = v:
    if isBool v then
      (if v then "true" else "false")
    else if isInt v || isFloat v then
      toString v
    else if isString v || isPath v then
      toJSON (toString v)
    else if isList v then
      "[" + concatStringsSep ", " (map value v) + "]"
    else
      throw "toml.nix: cannot write a ${typeOf v} as a TOML value";

  table = path: attrs:
    let
      present = filter (n: attrs.${n} != null) (attrNames attrs);
      isScalar = n: !(isAttrs attrs.${n}) && !(isTableArray attrs.${n});
      scalars = filter isScalar present;
      tables = filter (n: isAttrs attrs.${n}) present;
      arrays = filter (n: isTableArray attrs.${n}) present;
      sub = n: path ++ [ n ];
    in
    concatStringsSep "" (map (n: "${key n} = ${value attrs.${n}}\n") scalars)
    + concatStringsSep "" (map (n: "\n[${header (sub n)}]\n" + table (sub n) attrs.${n}) tables)
    + concatStringsSep "" (
      map (n: concatStringsSep "" (map (t: "\n[[${header (sub n)}]]\n" + table (sub n) t) attrs.${n})) arrays
    );
in
attrs: table [ ] attrs
