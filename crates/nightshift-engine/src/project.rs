//! A project folder on disk: `nightshift.toml` and `pipelines/*.toml`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nightshift_core::diag::{Diagnostic, FileDiagnostics};
use nightshift_core::pipeline::parse_pipeline;
use nightshift_core::project::parse_settings;
use nightshift_core::{Pipeline, ProjectSettings};

#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub pipeline: Arc<Pipeline>,
    pub source: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub settings: ProjectSettings,
    /// Valid pipelines, by name.
    pub pipelines: HashMap<String, LoadedPipeline>,
    /// Every file with problems (errors or warnings).
    pub problems: Vec<FileDiagnostics>,
    /// Files that failed to load, by the pipeline name they claim (file stem when unknown).
    pub broken: Vec<PathBuf>,
}

impl Project {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(FileDiagnostics::has_errors)
    }

    /// Problems of one pipeline's file (by name or file stem).
    pub fn problems_of(&self, name: &str) -> Vec<&FileDiagnostics> {
        self.problems
            .iter()
            .filter(|p| {
                p.path.file_stem().and_then(|s| s.to_str()) == Some(name)
                    || self.pipelines.get(name).is_some_and(|l| l.path == p.path)
            })
            .collect()
    }

    /// Where the project's metadata store lives: the PostgreSQL database named by
    /// `NIGHTSHIFT_STORE_URL` (so the hosts of a deployment can share one store without
    /// editing the project), else by `[store] url`, else the SQLite file `[store] path`.
    pub fn store_location(&self) -> nightshift_store::Location {
        let url = crate::env::var("NIGHTSHIFT_STORE_URL")
            .filter(|u| !u.trim().is_empty())
            .or_else(|| self.settings.store_url.clone());
        match url {
            Some(url) => nightshift_store::Location::Postgres(nightshift_store::PgLocation {
                url,
                password_env: self.settings.store_password_env.clone(),
            }),
            None => nightshift_store::Location::Sqlite(self.dir.join(&self.settings.store_path)),
        }
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir().join("logs")
    }

    /// `.nightshift/`: the store (by default), try logs, and the outcome journal.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".nightshift")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{0}` is not a folder")]
    NotADir(PathBuf),
    #[error("reading `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn relative(dir: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The pipeline files of a project, sorted by name.
pub fn pipeline_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let pdir = dir.join("pipelines");
    let mut files = vec![];
    match std::fs::read_dir(&pdir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|source| Error::Read {
                    path: pdir.clone(),
                    source,
                })?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Read { path: pdir, source }),
    }
    files.sort();
    Ok(files)
}

/// Loads and validates the whole project. Bad files are reported in `problems` and left
/// out; they never stop the others from loading.
/// Largest pipeline file nightshift reads.
pub const MAX_PIPELINE_FILE: u64 = 1024 * 1024;

pub fn load(dir: &Path) -> Result<Project, Error> {
    if !dir.is_dir() {
        return Err(Error::NotADir(dir.to_owned()));
    }
    // Tasks run with the project folder as their working directory: make it absolute.
    let dir = &dir.canonicalize().map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut problems = vec![];
    let settings_path = dir.join("nightshift.toml");
    let settings = match std::fs::read_to_string(&settings_path) {
        Ok(src) => {
            let (settings, diags) = parse_settings(&src);
            if !diags.is_empty() {
                problems.push(FileDiagnostics {
                    path: relative(dir, &settings_path),
                    source: src,
                    diagnostics: diags,
                });
            }
            settings
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProjectSettings::default(),
        Err(source) => {
            return Err(Error::Read {
                path: settings_path,
                source,
            });
        }
    };
    let mut pipelines: HashMap<String, LoadedPipeline> = HashMap::new();
    let mut broken = vec![];
    for path in pipeline_files(dir)? {
        let rel = relative(dir, &path);
        // A pipeline file is read, hashed and stored per version: a huge one would cost
        // every scheduler memory and time for nothing a pipeline needs.
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > MAX_PIPELINE_FILE
        {
            problems.push(FileDiagnostics {
                path: rel.clone(),
                source: String::new(),
                diagnostics: vec![
                    Diagnostic::error(
                        format!(
                            "the file is {} bytes; pipeline files are limited to {MAX_PIPELINE_FILE} bytes (1 MiB)",
                            meta.len()
                        ),
                        None,
                    )
                    .with_help("split it into several pipelines, or move long SQL into files the tasks read"),
                ],
            });
            broken.push(rel);
            continue;
        }
        let source = match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    problems.push(FileDiagnostics {
                        path: rel.clone(),
                        source: String::new(),
                        diagnostics: vec![
                            Diagnostic::error("the file is not valid UTF-8", None)
                                .with_help("save it as UTF-8 text"),
                        ],
                    });
                    broken.push(rel);
                    continue;
                }
            },
            Err(source) => return Err(Error::Read { path, source }),
        };
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let (p, mut diags) = parse_pipeline(&source, &stem, &settings);
        if let Some(p) = &p
            && let Some(other) = pipelines.get(&p.name)
        {
            diags.push(
                Diagnostic::error(
                    format!(
                        "pipeline name `{}` is already used by `{}`",
                        p.name,
                        relative(dir, &other.path).display()
                    ),
                    None,
                )
                .with_help("pipeline names must be unique in a project"),
            );
        }
        let failed = diags.iter().any(Diagnostic::is_error);
        if !diags.is_empty() {
            problems.push(FileDiagnostics {
                path: rel.clone(),
                source: source.clone(),
                diagnostics: diags,
            });
        }
        match p {
            Some(p) if !failed => {
                pipelines.insert(
                    p.name.clone(),
                    LoadedPipeline {
                        pipeline: Arc::new(p),
                        source,
                        path,
                    },
                );
            }
            _ => broken.push(rel),
        }
    }
    Ok(Project {
        dir: dir.to_owned(),
        settings,
        pipelines,
        problems,
        broken,
    })
}

/// A cheap fingerprint of the project's files (names, sizes, modification times), to
/// notice edits without reading every file.
/// After a reload: a pipeline whose file is now broken keeps its last valid version.
pub fn keep_last_valid(old: &Project, fresh: &mut Project) {
    for (name, lp) in &old.pipelines {
        let rel = lp
            .path
            .strip_prefix(&old.dir)
            .unwrap_or(&lp.path)
            .to_path_buf();
        if !fresh.pipelines.contains_key(name) && fresh.broken.contains(&rel) {
            fresh.pipelines.insert(name.clone(), lp.clone());
        }
    }
}

/// A stored version's pipeline name, and the pipeline or why it no longer validates.
pub type StoredPipeline = (String, Result<Pipeline, String>);

/// A pipeline version from the store, parsed against the project's settings: `None` when
/// the store has no such version, `Some((name, Err(errors)))` when it no longer validates.
pub fn stored_pipeline(
    store: &nightshift_store::Store,
    hash: &str,
    settings: &ProjectSettings,
) -> Result<Option<StoredPipeline>, nightshift_store::Error> {
    Ok(store.version_source(hash)?.map(|(name, source)| {
        let (p, diags) = parse_pipeline(&source, &name, settings);
        let parsed = p.ok_or_else(|| {
            diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        });
        (name, parsed)
    }))
}

/// `path` resolved, if it lies inside `dir` (itself resolved): no `..` or symlink leads out.
/// A path as the store keeps it: relative to the project folder, so a project moved or
/// copied keeps its history (a path outside the project is kept whole).
pub fn stored_path(project_dir: &Path, path: &Path) -> String {
    path.strip_prefix(project_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// A path the store holds, on disk: a relative one is under the project folder.
pub fn resolve_stored(project_dir: &Path, stored: &str) -> PathBuf {
    project_dir.join(stored)
}

pub fn inside(dir: &Path, path: &Path) -> Option<PathBuf> {
    let real = path.canonicalize().ok()?;
    real.starts_with(dir).then_some(real)
}

pub fn fingerprint(dir: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut files = pipeline_files(dir).unwrap_or_default();
    files.push(dir.join("nightshift.toml"));
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}
