//! Support for the web console's browser tests (issue #8): the prerequisites, running a script under
//! `tests/browser/` with node, and the checks every browser test makes on the script's report (each
//! page visited in order, captured at both widths as PNGs under the artifacts dir, labelled, reachable by
//! Tab). The scripts share their browser-side helpers in `tests/browser/lib.mjs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Chromium as Debian installs it; `KINKO_CHROMIUM` overrides.
pub const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
/// The widths every page is captured at (`WIDTHS` in lib.mjs).
pub const WIDTHS_PX: &[u32] = &[375, 1280];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// Fails (never skips) when the browser or its driver is missing, naming the command that installs it.
/// Answers the Chromium binary.
pub fn browser_prerequisites(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("KINKO_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| CHROMIUM_DEFAULT.into());
    assert!(
        chromium.is_file(),
        "Chromium not found at {}: the web console's browser tests need it. Install it with \
         `sudo apt-get install -y chromium` (Debian 12), or set KINKO_CHROMIUM to a Chromium binary.",
        chromium.display()
    );
    assert!(
        root.join("node_modules/playwright-core/package.json").is_file(),
        "playwright-core not found in {}/node_modules: run `npm install` in the repository (package.json pins it)",
        root.display()
    );
    chromium
}

/// Waits until kinko at `base` answers its health check.
pub async fn wait_until_serving(base: &str) {
    super::wait_for("kinko to answer", Duration::from_secs(30), None, || async {
        reqwest::get(format!("{base}/healthz")).await.ok().filter(|r| r.status().is_success())
    })
    .await;
}

/// The artifacts directory of one browser test: `target/test-artifacts/<name>/`.
pub fn artifacts_dir(root: &Path, name: &str) -> PathBuf {
    root.join("target/test-artifacts").join(name)
}

/// Runs `node <script> <base> <artifacts>` from the repository root with `KINKO_CHROMIUM` and `env`, and
/// answers the JSON report it printed; panics with the script's failures and stderr unless it exited 0
/// with `"ok": true`.
pub async fn run_script(
    root: &Path,
    chromium: &Path,
    script: &str,
    base: &str,
    artifacts: &Path,
    env: Vec<(&'static str, String)>,
) -> Value {
    let output = tokio::task::spawn_blocking({
        let (root, chromium, script, base, artifacts) =
            (root.to_path_buf(), chromium.to_path_buf(), script.to_string(), base.to_string(), artifacts.to_path_buf());
        move || {
            Command::new("node")
                .current_dir(&root)
                .arg(&script)
                .arg(&base)
                .arg(&artifacts)
                .env("KINKO_CHROMIUM", &chromium)
                .envs(env)
                .output()
                .expect("run node (Node.js 20 is a prerequisite)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value =
        stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| {
            panic!("the browser script printed no JSON report\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    assert!(
        output.status.success() && report["ok"] == true,
        "the browser journey failed ({}): {:#}\nstderr:\n{stderr}",
        output.status,
        report["failures"]
    );
    report
}

/// Every page in `expected` was visited in that order, captured at both widths as PNGs inside
/// `artifacts`, and passed the label and keyboard checks.
pub fn assert_pages_checked(report: &Value, expected: &[&str], artifacts: &Path) {
    let pages = report["pages"].as_array().expect("pages");
    let names: Vec<&str> = pages.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, expected, "pages visited");
    for p in pages {
        assert_eq!(p["unlabelled"].as_array().map(Vec::len), Some(0), "unlabelled controls on {}", p["name"]);
        assert_eq!(p["tab_reached"], p["interactive"], "Tab reach on {}", p["name"]);
        let shots = p["screenshots"].as_array().expect("screenshots");
        assert_eq!(shots.len(), WIDTHS_PX.len(), "screenshots of {}", p["name"]);
        for (shot, width) in shots.iter().zip(WIDTHS_PX) {
            let path = PathBuf::from(shot.as_str().unwrap());
            assert!(path.to_string_lossy().ends_with(&format!("-{width}.png")), "{} at {width} px", path.display());
            assert!(path.starts_with(artifacts), "{} outside {}", path.display(), artifacts.display());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
        }
    }
}

/// The HTTP status the report recorded for page `name`.
pub fn page_status(report: &Value, name: &str) -> Option<u64> {
    report["pages"].as_array()?.iter().find(|p| p["name"] == name).and_then(|p| p["status"].as_u64())
}
