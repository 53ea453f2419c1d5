//! `cargo run -p herdwise-guide [-- <src> <out>]`: builds the guide from `docs/guide/src` into
//! `target/guide` (open `target/guide/introduction.html`); exits 1 listing every broken link,
//! missing page or orphan.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .and_then(|p| p.parent())
        .map_or(manifest.clone(), PathBuf::from);
    let mut args = std::env::args_os().skip(1);
    let src = args
        .next()
        .map_or_else(|| root.join("docs/guide/src"), PathBuf::from);
    let out = args
        .next()
        .map_or_else(|| root.join("target/guide"), PathBuf::from);
    match herdwise_guide::build(&src, &out) {
        Ok(report) => {
            println!(
                "guide: {} pages into {}, {} links checked, {} external (not fetched)",
                report.pages,
                out.display(),
                report.links_checked,
                report.external_links
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guide: {e}");
            ExitCode::FAILURE
        }
    }
}
