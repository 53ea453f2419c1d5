//! Builds the guide: markdown pages listed in a `SUMMARY.md` (mdBook's layout) rendered into
//! static HTML with a navigation sidebar, every link checked on the way.
//!
//! Contract: [`build`] reads `<src>/SUMMARY.md`, renders every page it lists into `<out>`
//! (`x.md` → `x.html`, same folders), and fails with every problem found, not just the first:
//! a page listed but missing, a markdown file in `<src>` not listed (an orphan), a relative
//! link to a file that does not exist, an `#anchor` that no heading of the target makes
//! (GitHub's rule: lowercased, spaces to `-`, other punctuation dropped). Links to files outside
//! the guide (the repository's code and tests) must exist and are rewritten relative to the
//! output; links with a scheme (`https:`) are not fetched (the build is offline) and only
//! counted.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("guide-doc-{}", std::process::id()));
//! let src = dir.join("src");
//! std::fs::create_dir_all(&src).unwrap();
//! std::fs::write(src.join("SUMMARY.md"), "- [Intro](intro.md)\n").unwrap();
//! std::fs::write(src.join("intro.md"), "# Intro\n\nSee [below](#more).\n\n## More\n").unwrap();
//! let report = herdwise_guide::build(&src, &dir.join("out")).unwrap();
//! assert_eq!(report.pages, 1);
//! assert!(dir.join("out/intro.html").exists());
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag, TagEnd};

/// What went wrong building the guide.
#[derive(Debug, thiserror::Error)]
pub enum GuideError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pages have broken links, missing pages or orphans: one line each.
    #[error("the guide has {} problem(s):\n{}", .0.len(), .0.join("\n"))]
    Broken(Vec<String>),
}

/// What a successful build did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Pages rendered.
    pub pages: usize,
    /// Relative links (and anchors) checked.
    pub links_checked: usize,
    /// Links with a scheme, not fetched.
    pub external_links: usize,
}

/// One entry of the summary.
struct Entry {
    title: String,
    /// Relative to the source folder.
    path: PathBuf,
    depth: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuideError + '_ {
    move |source| GuideError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES
}

/// The anchor a heading's text makes (GitHub's rule).
pub fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The summary's entries: list items `- [Title](path.md)`, nested by indentation.
fn summary(text: &str, problems: &mut Vec<String>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(item) = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "))
        else {
            continue;
        };
        let depth = (line.len() - trimmed.len()) / 2;
        let parsed = item.strip_prefix('[').and_then(|rest| {
            let (title, rest) = rest.split_once("](")?;
            let (path, _) = rest.split_once(')')?;
            Some((title.to_string(), path.to_string()))
        });
        match parsed {
            Some((title, path)) if path.ends_with(".md") => entries.push(Entry {
                title,
                path: PathBuf::from(path),
                depth,
            }),
            _ => problems.push(format!(
                "SUMMARY.md:{}: not a `- [Title](page.md)` item: {line}",
                n + 1
            )),
        }
    }
    entries
}

/// The anchors of a markdown text's headings (with `-1`, `-2` for repeats, as GitHub does).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for heading in heading_texts(text) {
        let base = slug(&heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

fn heading_texts(text: &str) -> Vec<String> {
    let mut headings = Vec::new();
    let mut current: Option<String> = None;
    for event in Parser::new_ext(text, options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => current = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => headings.extend(current.take()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = current.as_mut() {
                    c.push_str(&t);
                }
            }
            _ => {}
        }
    }
    headings
}

/// `path` without `.` and `..` components (not touching the file system).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `to` relative to the folder `from` (both absolute and normalized).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to_parts[common..] {
        out.push(part);
    }
    out
}

/// Builds the guide from `src` into `out` (see the crate contract).
pub fn build(src: &Path, out: &Path) -> Result<Report, GuideError> {
    let src = normalize(&std::path::absolute(src).map_err(io(src))?);
    let out = normalize(&std::path::absolute(out).map_err(io(out))?);
    let summary_path = src.join("SUMMARY.md");
    let summary_text = std::fs::read_to_string(&summary_path).map_err(io(&summary_path))?;
    let mut problems = Vec::new();
    let entries = summary(&summary_text, &mut problems);
    let mut pages: HashMap<PathBuf, String> = HashMap::new();
    for entry in &entries {
        let file = normalize(&src.join(&entry.path));
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                pages.insert(file, text);
            }
            Err(e) => problems.push(format!(
                "SUMMARY.md lists {}, which cannot be read: {e}",
                entry.path.display()
            )),
        }
    }
    for file in markdown_files(&src)? {
        if file != summary_path && !pages.contains_key(&file) {
            problems.push(format!(
                "{} is not listed in SUMMARY.md",
                relative(&src, &file).display()
            ));
        }
    }
    let mut anchor_cache: HashMap<PathBuf, BTreeSet<String>> = pages
        .iter()
        .map(|(path, text)| (path.clone(), anchors(text)))
        .collect();
    let mut report = Report {
        pages: 0,
        links_checked: 0,
        external_links: 0,
    };
    for entry in &entries {
        let file = normalize(&src.join(&entry.path));
        let Some(text) = pages.get(&file) else {
            continue;
        };
        let page_dir = file.parent().unwrap_or(&src).to_path_buf();
        let out_file = out.join(&entry.path).with_extension("html");
        let out_dir = out_file.parent().unwrap_or(&out).to_path_buf();
        let name = entry.path.display().to_string();
        let events = rewrite(
            text,
            &name,
            &Links {
                src: &src,
                out: &out,
                page_dir: &page_dir,
                out_dir: &out_dir,
                own: &file,
                pages: &pages,
            },
            &mut anchor_cache,
            &mut problems,
            &mut report,
        );
        let mut body = String::new();
        html::push_html(&mut body, events.into_iter());
        let page = template(&entry.title, &body, &entries, &entry.path);
        std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
        std::fs::write(&out_file, page).map_err(io(&out_file))?;
        report.pages += 1;
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(GuideError::Broken(problems))
    }
}

/// Every `.md` file under `dir`.
fn markdown_files(dir: &Path) -> Result<Vec<PathBuf>, GuideError> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for item in std::fs::read_dir(&folder).map_err(io(&folder))? {
            let path = item.map_err(io(&folder))?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(normalize(&path));
            }
        }
    }
    Ok(files)
}

/// Where a page's links are resolved from and rendered to.
struct Links<'a> {
    src: &'a Path,
    out: &'a Path,
    page_dir: &'a Path,
    out_dir: &'a Path,
    own: &'a Path,
    pages: &'a HashMap<PathBuf, String>,
}

/// The page's events with heading ids set and links checked and rewritten.
fn rewrite<'t>(
    text: &'t str,
    name: &str,
    links: &Links<'_>,
    anchor_cache: &mut HashMap<PathBuf, BTreeSet<String>>,
    problems: &mut Vec<String>,
    report: &mut Report,
) -> Vec<Event<'t>> {
    let mut events: Vec<Event<'t>> = Parser::new_ext(text, options()).collect();
    // Heading ids, as `anchors` computes them.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut i = 0;
    while i < events.len() {
        if let Event::Start(Tag::Heading { .. }) = &events[i] {
            let mut heading = String::new();
            for event in &events[i + 1..] {
                match event {
                    Event::End(TagEnd::Heading(_)) => break,
                    Event::Text(t) | Event::Code(t) => heading.push_str(t),
                    _ => {}
                }
            }
            let base = slug(&heading);
            let n = seen.entry(base.clone()).or_insert(0);
            let id = if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            *n += 1;
            if let Event::Start(Tag::Heading { id: slot, .. }) = &mut events[i] {
                *slot = Some(CowStr::from(id));
            }
        }
        i += 1;
    }
    for event in &mut events {
        let dest = match event {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => dest_url,
            _ => continue,
        };
        let url = dest.to_string();
        if url.contains("://") || url.starts_with("mailto:") {
            report.external_links += 1;
            continue;
        }
        report.links_checked += 1;
        let (path, anchor) = match url.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (url.as_str(), None),
        };
        let target = if path.is_empty() {
            links.own.to_path_buf()
        } else {
            normalize(&links.page_dir.join(path))
        };
        if !target.exists() {
            problems.push(format!("{name}: link to {url}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            if target.extension().is_some_and(|e| e == "md") {
                if !anchor_cache.contains_key(&target) {
                    let text = std::fs::read_to_string(&target).unwrap_or_default();
                    anchor_cache.insert(target.clone(), anchors(&text));
                }
                if !anchor_cache
                    .get(&target)
                    .is_some_and(|set| set.contains(anchor))
                {
                    problems.push(format!("{name}: link to {url}: no heading makes #{anchor}"));
                    continue;
                }
            }
        }
        // Rendered: guide pages as their HTML, anything else as the file, relative to the
        // output.
        let rendered = if links.pages.contains_key(&target) {
            let in_out = links
                .out
                .join(relative(links.src, &target))
                .with_extension("html");
            relative(links.out_dir, &in_out)
        } else {
            relative(links.out_dir, &target)
        };
        let mut rendered = rendered.display().to_string();
        if path.is_empty() {
            rendered.clear();
        }
        if let Some(anchor) = anchor {
            rendered.push('#');
            rendered.push_str(anchor);
        }
        *dest = CowStr::from(rendered);
    }
    events
}

/// A whole HTML page: the sidebar of every entry, the page's body.
fn template(title: &str, body: &str, entries: &[Entry], own: &Path) -> String {
    let depth = own.components().count().saturating_sub(1);
    let up = "../".repeat(depth);
    let mut nav = String::new();
    for entry in entries {
        let href = format!("{up}{}", entry.path.with_extension("html").display());
        let class = if entry.path == own {
            " class=\"current\""
        } else {
            ""
        };
        let _ = writeln!(
            nav,
            "<li style=\"margin-left:{}em\"><a href=\"{href}\"{class}>{}</a></li>",
            entry.depth,
            escape(&entry.title)
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{} — Herdwise guide</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <nav><ul>\n{nav}</ul></nav>\n<main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const STYLE: &str = "body{display:flex;margin:0;font:16px/1.5 system-ui,sans-serif}\
nav{width:16em;padding:1em;background:#f4f4f4;min-height:100vh}nav ul{list-style:none;padding:0}\
nav a.current{font-weight:bold}main{max-width:50em;padding:1em 2em}\
pre{background:#f6f8fa;padding:.8em;overflow:auto}code{font-size:90%}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}";
