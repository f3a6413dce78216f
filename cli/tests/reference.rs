//! The command line reference, `docs/src/reference/cli.md`, is generated from the `Cli`
//! command: these tests fail when the committed page differs from what clap generates now.
//! `BATCHLINE_BLESS=1 cargo test -p batchline-cli --test reference` writes it instead.

use std::collections::BTreeSet;
use std::path::PathBuf;

use batchline_cli::Cli;
use clap::CommandFactory;
use clap_markdown::MarkdownOptions;

const TITLE: &str = "Command line reference";

/// How to write the page anew, as the failures say.
const REGENERATE: &str = "BATCHLINE_BLESS=1 cargo test -p batchline-cli --test reference";

/// The page, from the repository's root.
const PAGE: &str = "docs/src/reference/cli.md";

fn page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(PAGE)
}

/// The page as clap generates it now: the title, a paragraph on where it comes from, then
/// a list of the commands and every command with its arguments, options, defaults and help.
fn generated() -> String {
    let options = MarkdownOptions::new().title(TITLE.to_owned()).show_footer(false).show_table_of_contents(true);
    let markdown = clap_markdown::help_markdown_custom::<Cli>(&options);
    let opening = format!(
        "# {TITLE}\n\nThis document contains the help content for the `{}` command-line program.\n\n",
        Cli::command().get_name()
    );
    let body = markdown.strip_prefix(&opening).expect("clap-markdown opens the page with its title and a sentence");
    let intro = format!(
        "This page is generated from the `batchline` command's definition (`cli/src/lib.rs`) and says \
         what its `--help` says: do not edit it by hand. After changing a command, regenerate it with \
         `{REGENERATE}`; the crate's tests fail while it is out of date."
    );
    // One blank line between blocks, no trailing spaces: the page reads as written.
    let mut page = format!("# {TITLE}\n\n{intro}\n\n");
    let mut blank = true;
    for line in body.lines().map(str::trim_end) {
        if !(line.is_empty() && blank) {
            page.push_str(line);
            page.push('\n');
        }
        blank = line.is_empty();
    }
    format!("{}\n", page.trim_end())
}

#[test]
fn the_cli_reference_is_what_clap_generates() {
    let path = page_path();
    let want = generated();
    if std::env::var_os("BATCHLINE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(h, w)| h != w)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "{PAGE} is not what clap generates from the `Cli` command (first difference at line {}: \
             page {:?}, clap {:?}); regenerate it with `{REGENERATE}`",
            first + 1,
            have.lines().nth(first).unwrap_or("<end>"),
            want.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

/// mdBook's id for a heading: its text without inline markup, lowercased, whitespace as `-`,
/// other punctuation than `-` and `_` dropped; a repeated id gets `-1`, `-2`, ...
fn mdbook_ids(markdown: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in markdown.lines().filter(|l| l.starts_with('#')) {
        let text = line.trim_start_matches('#').trim();
        let base: String = text
            .chars()
            .filter_map(|c| match c {
                c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_ascii_lowercase()),
                c if c.is_whitespace() => Some('-'),
                _ => None,
            })
            .collect();
        let id = (0..).map(|n| if n == 0 { base.clone() } else { format!("{base}-{n}") }).find(|id| !ids.contains(id));
        ids.insert(id.unwrap());
    }
    ids
}

#[test]
fn the_cli_references_in_page_links_reach_its_headings_in_mdbook() {
    let page = generated();
    assert!(page.starts_with(&format!("# {TITLE}\n")), "an mdBook page starts with its title");
    assert!(!page.contains("<a ") && !page.contains("<hr") && !page.contains("<small"), "no raw HTML: {page}");
    let ids = mdbook_ids(&page);
    let links: Vec<&str> = page.split("](#").skip(1).map(|rest| &rest[..rest.find(')').unwrap()]).collect();
    assert!(links.len() > 10, "the contents list every command: {links:?}");
    for link in links {
        assert!(ids.contains(link), "#{link} is no heading's id in mdBook (ids: {ids:?})");
    }
}
