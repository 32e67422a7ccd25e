//! The failure data of a failed step, from its error: the one place that
//! knows every error kind the steps raise (an install failure, a secrets
//! alarm). Above install and secrets; the step registry and the pipeline
//! call it.

/// What a failed event carries besides its message: `security` for an
/// interception alarm, so the server marks the machine compromised; the
/// class, hint and last lines of a failed `nixos-install`.
pub fn failure_data(error: &anyhow::Error) -> landfall_proto::FailureData {
    if let Some(f) = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::install::nixos_install::InstallFailure>())
    {
        return f.failure_data();
    }
    error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::secrets::SecretsError>())
        .map(|e| e.failure_data())
        .unwrap_or_default()
}
