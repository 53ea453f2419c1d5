//! The guide in `docs/guide` builds with every link and anchor resolving; and the checker
//! does catch what it claims to (a broken link, a missing anchor, a missing page, an orphan).

use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herdwise-guide-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_guide_builds_and_every_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = scratch("real");
    let report = match herdwise_guide::build(&root.join("docs/guide/src"), &out) {
        Ok(report) => report,
        Err(e) => panic!("{e}"),
    };
    eprintln!("{report:?}");
    assert!(report.pages >= 10, "{report:?}");
    assert!(report.links_checked >= 50, "{report:?}");
    let intro = std::fs::read_to_string(out.join("introduction.html")).unwrap();
    assert!(intro.contains("<nav>"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn broken_links_anchors_missing_pages_and_orphans_are_all_reported() {
    let dir = scratch("broken");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(
        src.join("SUMMARY.md"),
        "- [A](a.md)\n  - [B](sub/b.md)\n- [Gone](gone.md)\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a.md"),
        "# Alpha page\n\n[ok](sub/b.md#beta-section) [ok too](#alpha-page) \
         [bad file](nothere.md) [bad anchor](sub/b.md#nope) [web](https://example.org)\n",
    )
    .unwrap();
    std::fs::write(
        src.join("sub/b.md"),
        "# Beta, section!\n\n[up](../a.md) [self](#beta-section)\n",
    )
    .unwrap();
    std::fs::write(src.join("orphan.md"), "# Orphan\n").unwrap();
    let err = herdwise_guide::build(&src, &dir.join("out")).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    let herdwise_guide::GuideError::Broken(problems) = err else {
        panic!("expected broken links, got {text}");
    };
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(text.contains("a.md: link to nothere.md: no such file"));
    assert!(text.contains("no heading makes #nope"));
    assert!(text.contains("gone.md"));
    assert!(text.contains("orphan.md is not listed"));
    // The good pages were still rendered, links rewritten to the HTML pages.
    let a = std::fs::read_to_string(dir.join("out/a.html")).unwrap();
    assert!(a.contains("href=\"sub/b.html#beta-section\""), "{a}");
    assert!(a.contains("id=\"alpha-page\""), "{a}");
    let b = std::fs::read_to_string(dir.join("out/sub/b.html")).unwrap();
    assert!(b.contains("href=\"../a.html\""), "{b}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn slugs_follow_githubs_rule() {
    assert_eq!(herdwise_guide::slug("The problem"), "the-problem");
    assert_eq!(
        herdwise_guide::slug("Stale-if-error (fail-safe)"),
        "stale-if-error-fail-safe"
    );
    assert_eq!(herdwise_guide::slug("`set` & `get`"), "set--get");
}
