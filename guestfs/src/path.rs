//! Guest paths, resolved without the host: a path names something inside the guest
//! filesystem and nothing a caller types (`..`, a NUL, repeated slashes) can make it name
//! anything else. Pure functions, so the rules are tested apart from any filesystem.

use crate::error::{Error, Result};

/// One step of a guest path, after empty parts and `.` are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component<'a> {
    Parent,
    Name(&'a str),
}

/// Splits `path` on '/', dropping empty parts and `.`. Relative and absolute paths are the
/// same thing here: both start at the guest's root. A NUL cannot be in any on-disk name and
/// would end the string early in any C-facing tool, so it is refused.
pub fn components(path: &str) -> Result<Vec<Component<'_>>> {
    if path.contains('\0') {
        return Err(Error::InvalidPath(path.replace('\0', "\\0")));
    }
    Ok(path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(|p| {
            if p == ".." {
                Component::Parent
            } else {
                Component::Name(p)
            }
        })
        .collect())
}

/// Lexical resolution: `..` pops a name but never goes above the root, so `/../../etc` is the
/// guest's `/etc`. Symlinks are not looked at; [`crate::fs`] resolves those step by step with
/// the same clamping.
pub fn normalize(path: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in components(path)? {
        match c {
            Component::Parent => {
                out.pop();
            }
            Component::Name(n) => out.push(n.to_owned()),
        }
    }
    Ok(out)
}

/// The absolute guest path of resolved components: `/` for the root.
pub fn join(parts: &[String]) -> String {
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut s = String::new();
    for p in parts {
        s.push('/');
        s.push_str(p);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        join(&normalize(p).unwrap())
    }

    #[test]
    fn root_forms() {
        for p in ["", "/", "//", ".", "/./", "..", "/../.."] {
            assert_eq!(norm(p), "/", "{p:?}");
        }
    }

    #[test]
    fn parent_never_leaves_the_root() {
        assert_eq!(norm("/../../etc"), "/etc");
        assert_eq!(norm("../../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/a/b/../../../../c"), "/c");
        assert_eq!(norm("/a/../b/./c/.."), "/b");
    }

    #[test]
    fn slashes_and_dots_collapse() {
        assert_eq!(norm("a//b///c/"), "/a/b/c");
        assert_eq!(norm("/a/./b/."), "/a/b");
        // Names that merely start with dots are names.
        assert_eq!(norm("/...//.hidden/..x"), "/.../.hidden/..x");
    }

    #[test]
    fn nul_is_rejected() {
        assert!(matches!(
            normalize("/etc/pass\0wd"),
            Err(Error::InvalidPath(_))
        ));
    }

    #[test]
    fn components_keep_parents_for_symlink_walks() {
        assert_eq!(
            components("a/../b").unwrap(),
            vec![
                Component::Name("a"),
                Component::Parent,
                Component::Name("b")
            ]
        );
    }
}
