//! Finding an app's program (or a probe's command) as `execve` would,
//! and the `PATH` apps get when their spec sets none.

use std::path::{Path, PathBuf};

use p2p_core::{Error, Result};

/// Finds `program` as `execve` would: a path with a `/` is taken
/// relative to `workdir`; a bare name is looked up in `path_var` (or the
/// default `PATH`). It must be an executable file.
pub(crate) fn resolve_program(
    program: &str,
    workdir: &Path,
    path_var: Option<&str>,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| Err(Error::invalid("entrypoint", reason));
    if program.is_empty() {
        return bad("the program is empty".into());
    }
    let check = |p: &Path| -> std::result::Result<PathBuf, String> {
        match std::fs::metadata(p) {
            Err(e) => Err(format!("{}: {e}", p.display())),
            Ok(m) if !m.is_file() => Err(format!("{} is not a file", p.display())),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Err(format!("{} is not executable", p.display()))
            }
            Ok(_) => Ok(p.to_path_buf()),
        }
    };
    if program.contains('/') {
        let p = workdir.join(program);
        return check(&p).or_else(bad);
    }
    let path = path_var.unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        if let Ok(p) = check(&Path::new(dir).join(program)) {
            return Ok(p);
        }
    }
    bad(format!("{program:?} was not found in PATH ({path})"))
}

/// `PATH` for apps whose spec sets none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_like_execve() {
        let wd = Path::new("/");
        assert!(resolve_program("sh", wd, None).unwrap().ends_with("sh"));
        assert!(
            resolve_program("etc/passwd", wd, None)
                .unwrap_err()
                .to_string()
                .contains("not executable")
        );
        assert!(
            resolve_program("./etc", wd, None)
                .unwrap_err()
                .to_string()
                .contains("not a file")
        );
        assert!(
            resolve_program("./nope", wd, None)
                .unwrap_err()
                .to_string()
                .contains("No such file")
        );
    }
}
