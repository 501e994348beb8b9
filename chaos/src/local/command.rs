//! Running the system's tools (`ip`, `kubectl`, `nsenter`) and reading
//! their failures.

use std::ffi::OsStr;

use super::LocalError;

/// `program ARGS`: its standard output, or its standard error as the error.
pub(crate) async fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, LocalError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| LocalError::Io {
            what: format!("cannot run {program}"),
            source,
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    Err(LocalError::Command {
        command: format!("{program} {}", shown.join(" ")),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
