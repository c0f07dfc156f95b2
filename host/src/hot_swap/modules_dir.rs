//! The folder the admin endpoint may load modules from (`--modules-dir`).
//!
//! A requested path is resolved inside it without looking at anything
//! outside it: `..`, an absolute path elsewhere and a symbolic link whose
//! target leaves the folder are refused before any file out there is
//! touched, with one answer for all of them, so a refusal tells nothing
//! about files outside (not even whether they exist). Only binary
//! components are taken unless text modules were asked for: the text
//! parser's errors quote the file.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed at most while resolving one path.
const MAX_LINKS: usize = 40;

/// The first four bytes of every binary WebAssembly module or component.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Where the admin endpoint may load modules from.
#[derive(Debug, Clone)]
pub struct ModulesDir {
    /// The folder, as given (requests may name it so).
    given: PathBuf,
    /// The folder with every link resolved: what resolved paths start with.
    real: PathBuf,
    /// Accept WebAssembly text (`.wat`) as well as binary components.
    accept_text: bool,
}

impl ModulesDir {
    pub fn new(folder: &Path, accept_text: bool) -> std::io::Result<Self> {
        Ok(Self {
            given: folder.to_path_buf(),
            real: folder.canonicalize()?,
            accept_text,
        })
    }

    pub fn path(&self) -> &Path {
        &self.given
    }

    /// The file a request names, inside the folder, or why not.
    pub fn resolve(&self, requested: &Path) -> Result<PathBuf, String> {
        let outside = || {
            format!(
                "{} is not a module inside the modules directory {} (no `..`, no absolute path elsewhere, no link \
                 out of it)",
                requested.display(),
                self.given.display()
            )
        };
        let relative = if requested.is_absolute() {
            requested
                .strip_prefix(&self.given)
                .or_else(|_| requested.strip_prefix(&self.real))
                .map_err(|_| outside())?
        } else {
            requested
        };
        let mut pending: VecDeque<OsString> = VecDeque::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => pending.push_back(name.to_os_string()),
                Component::CurDir => {}
                _ => return Err(outside()),
            }
        }
        let mut at = self.real.clone();
        let mut links = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                // Only a link's target gets here: it may climb, not leave.
                if at == self.real {
                    return Err(outside());
                }
                at.pop();
                continue;
            }
            let next = at.join(&name);
            let metadata = std::fs::symlink_metadata(&next)
                .map_err(|_| format!("{}: no such module in {}", relative.display(), self.given.display()))?;
            if !metadata.file_type().is_symlink() {
                at = next;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("{}: too many links", relative.display()));
            }
            let target = std::fs::read_link(&next).map_err(|e| format!("{}: {e}", relative.display()))?;
            let mut from_target = Vec::new();
            let target = if target.is_absolute() {
                at = self.real.clone();
                target
                    .strip_prefix(&self.real)
                    .or_else(|_| target.strip_prefix(&self.given))
                    .map_err(|_| outside())?
                    .to_path_buf()
            } else {
                target
            };
            for component in target.components() {
                match component {
                    Component::Normal(name) => from_target.push(name.to_os_string()),
                    Component::ParentDir => from_target.push(OsString::from("..")),
                    Component::CurDir => {}
                    _ => return Err(outside()),
                }
            }
            for name in from_target.into_iter().rev() {
                pending.push_front(name);
            }
        }
        self.check_format(&at, relative)?;
        Ok(at)
    }

    /// Refuses what is not a binary component, unless text was asked for.
    fn check_format(&self, file: &Path, relative: &Path) -> Result<(), String> {
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(file).and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::other("not a file"));
            }
            f.read(&mut magic)
        });
        match read {
            Err(e) => Err(format!("{}: {e}", relative.display())),
            Ok(4) if &magic == WASM_MAGIC => Ok(()),
            Ok(_) if self.accept_text => Ok(()),
            Ok(_) => Err(format!(
                "{}: not a binary WebAssembly component (the admin endpoint takes text modules only with \
                 --admin-accept-text)",
                relative.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, tempfile::TempDir, ModulesDir) {
        let root = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("sub")).expect("mkdir");
        std::fs::write(root.path().join("a.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
        std::fs::write(root.path().join("sub/b.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
        std::fs::write(root.path().join("text.wat"), b"(component)").expect("write");
        std::fs::write(elsewhere.path().join("secret.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
        let dir = ModulesDir::new(root.path(), false).expect("dir");
        (root, elsewhere, dir)
    }

    #[test]
    fn names_inside_resolve_relative_or_absolute() {
        let (root, _elsewhere, dir) = folder();
        let real = root.path().canonicalize().expect("real");
        assert_eq!(dir.resolve(Path::new("a.wasm")), Ok(real.join("a.wasm")));
        assert_eq!(dir.resolve(Path::new("./sub/b.wasm")), Ok(real.join("sub/b.wasm")));
        assert_eq!(
            dir.resolve(&root.path().join("sub/b.wasm")),
            Ok(real.join("sub/b.wasm"))
        );
    }

    #[test]
    fn traversal_and_paths_elsewhere_are_refused_alike() {
        let (_root, elsewhere, dir) = folder();
        let existing = elsewhere.path().join("secret.wasm");
        let missing = elsewhere.path().join("missing.wasm");
        let answers: Vec<String> = [
            existing.clone(),
            missing.clone(),
            PathBuf::from("../x.wasm"),
            PathBuf::from("sub/../../x.wasm"),
        ]
        .iter()
        .map(|p| dir.resolve(p).expect_err("refused"))
        .collect();
        for answer in &answers {
            assert!(answer.contains("not a module inside the modules directory"), "{answer}");
        }
        // The same words for a file out there that exists and one that does not.
        assert_eq!(
            answers[0].replace(&existing.display().to_string(), "P"),
            answers[1].replace(&missing.display().to_string(), "P")
        );
    }

    #[cfg(unix)]
    #[test]
    fn links_may_stay_inside_but_not_leave() {
        let (root, elsewhere, dir) = folder();
        let real = root.path().canonicalize().expect("real");
        std::os::unix::fs::symlink("sub/b.wasm", root.path().join("inside.wasm")).expect("link");
        std::os::unix::fs::symlink("../a.wasm", root.path().join("sub/up.wasm")).expect("link");
        std::os::unix::fs::symlink(elsewhere.path().join("secret.wasm"), root.path().join("out.wasm")).expect("link");
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.path().join("climb.wasm")).expect("link");
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("outdir")).expect("link");
        assert_eq!(dir.resolve(Path::new("inside.wasm")), Ok(real.join("sub/b.wasm")));
        assert_eq!(dir.resolve(Path::new("sub/up.wasm")), Ok(real.join("a.wasm")));
        for name in ["out.wasm", "climb.wasm", "outdir/secret.wasm"] {
            let answer = dir.resolve(Path::new(name)).expect_err(name);
            assert!(answer.contains("not a module inside the modules directory"), "{answer}");
        }
    }

    #[test]
    fn text_modules_only_when_asked_for_and_never_quoted() {
        let (root, _elsewhere, dir) = folder();
        let answer = dir.resolve(Path::new("text.wat")).expect_err("text refused");
        assert!(answer.contains("not a binary WebAssembly component"), "{answer}");
        assert!(!answer.contains("(component)"), "{answer}");
        let texts = ModulesDir::new(root.path(), true).expect("dir");
        assert!(texts.resolve(Path::new("text.wat")).is_ok());
        let missing = dir.resolve(Path::new("missing.wasm")).expect_err("missing");
        assert!(missing.contains("no such module"), "{missing}");
    }
}
