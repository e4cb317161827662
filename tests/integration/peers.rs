//! The Python environment of the real peers the tests start (Synapse, moto, mautrix-python's
//! appservice library, heisenbridge), provisioned by the
//! tests themselves: `cargo test --workspace` on a fresh machine needs nothing else. Made once,
//! under a file lock, so parallel tests (threads here, processes under nextest) wait for one
//! installation instead of racing through several.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// Where the environment lives, under `$HOME`, unless `SYNAPSE_VENV` says otherwise (the server
/// reads every `HEARTH_` variable as an option, so the name is not one of those).
const DEFAULT_VENV: &str = ".cache/hearth-venv";

/// What the tests run from it: a program it installs, or (`import:`) a module it provides.
const PACKAGES: &[(&str, &str)] = &[
    ("bin/synapse_homeserver", "matrix-synapse"),
    ("bin/moto_server", "moto[server]"),
    ("import:mautrix.appservice", "mautrix"),
    ("bin/heisenbridge", "heisenbridge"),
];

fn location() -> PathBuf {
    std::env::var_os("SYNAPSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(DEFAULT_VENV)
        })
}

fn missing(venv: &Path) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(check, _)| match check.strip_prefix("import:") {
            Some(module) => !Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            None => !venv.join(check).is_file(),
        })
        .map(|(_, package)| *package)
        .collect()
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("{shown} did not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Debian splits `venv` and `ensurepip` out of python3; as root, install them.
fn make_venv(venv: &Path) -> Result<(), String> {
    let first = run(Command::new("python3").arg("-m").arg("venv").arg(venv));
    if first.is_ok() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        return first;
    }
    eprintln!("installing python3-venv with apt-get");
    let _ = std::fs::remove_dir_all(venv);
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "python3-venv"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))
}

fn provision(venv: &Path) -> Result<(), String> {
    if missing(venv).is_empty() {
        return Ok(());
    }
    let parent = venv.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let lock_path = venv.with_extension("lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    // Whoever held the lock before may have done it all.
    let packages = missing(venv);
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!(
        "creating {} with {} (once; later runs reuse it)",
        venv.display(),
        packages.join(", ")
    );
    if !venv.join("bin/python").exists() {
        make_venv(venv)?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(&packages))
}

/// The environment with every peer installed; the first caller installs what is missing.
pub fn python_env() -> PathBuf {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let venv = location();
            provision(&venv).map(|()| venv)
        })
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the peers' Python environment: {e}"))
}
