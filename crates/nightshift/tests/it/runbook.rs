//! docs/runbook.md: every entry names the tests that walk it, and every named test exists in
//! this test binary (so CI runs it).

use std::path::Path;

#[test]
fn every_runbook_entry_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let book = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let entries: Vec<&str> = book.split("\n## ").skip(1).collect();
    assert!(entries.len() >= 15, "{} entries", entries.len());
    let mut named = 0;
    for entry in entries {
        let title = entry.lines().next().unwrap_or("");
        let tests = entry
            .split("**Tests**:")
            .nth(1)
            .unwrap_or_else(|| panic!("runbook entry `{title}` names no test"));
        for part in tests.split('`').skip(1).step_by(2) {
            let Some((module, name)) = part.split_once("::") else {
                continue;
            };
            let src = std::fs::read_to_string(tests_dir.join(format!("{module}.rs")))
                .unwrap_or_else(|_| panic!("`{part}` in `{title}`: no test module `{module}`"));
            assert!(
                src.contains(&format!("fn {name}()")),
                "`{part}` in runbook entry `{title}` is not a test"
            );
            named += 1;
        }
    }
    assert!(named >= 25, "{named} tests named");
}

/// A clone has no folder beside it: the docs name only files of the repository, and every
/// `*.md` file they name exists.
#[test]
fn the_docs_stand_on_their_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs: Vec<_> = ["README.md", "ARCHITECTURE.md", "SECURITY.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let here = doc.parent().unwrap();
        assert!(
            !text.contains("../shared") && !text.contains("shared/design"),
            "{} points outside the repository",
            doc.display()
        );
        for named in text.split('`').skip(1).step_by(2) {
            if named.ends_with(".md") && !named.contains(' ') && !named.contains('*') {
                assert!(
                    here.join(named).exists() || root.join(named).exists(),
                    "{} names `{named}`, which does not exist",
                    doc.display()
                );
            }
        }
    }
}
