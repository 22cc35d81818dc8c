//! Authorization with a Casbin-format model and policy, as the book's ACL.
//!
//! Supported model (the book's, and the usual ACL shape):
//!
//! ```text
//! [request_definition]
//! r = sub, obj, act
//! [policy_definition]
//! p = sub, obj, act
//! [policy_effect]
//! e = some(where (p.eft == allow))
//! [matchers]
//! m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
//! ```
//!
//! The matcher may be any conjunction (`&&`) of `r.X == p.Y` equalities over
//! the defined fields. Policy lines are CSV: `p, root, *, produce`; blank
//! lines and `#` comments are ignored. The object is the log's name; a
//! rule with object `*` covers every log, so `p, root, *, produce` lets
//! subject `root` produce to any log and `p, app, orders, produce` lets
//! `app` produce to `orders` only. Anything outside this
//! subset is rejected with the file and line, never silently ignored.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct AclError {
    pub path: PathBuf,
    /// 1-based line number (0 when the problem is the file as a whole).
    pub line: usize,
    pub message: String,
}

/// A loaded model and policy.
#[derive(Clone, Debug)]
pub struct Acl {
    request_fields: Vec<String>,
    policy_fields: Vec<String>,
    /// (request field index, policy field index) pairs that must be equal.
    matcher: Vec<(usize, usize)>,
    rules: Vec<Vec<String>>,
}

/// What sidelog asks the ACL about.
pub const OBJECT_ANY: &str = "*";
pub const ACT_PRODUCE: &str = "produce";
pub const ACT_CONSUME: &str = "consume";
/// Creating and deleting logs, removing members.
pub const ACT_ADMIN: &str = "admin";

fn err(path: &Path, line: usize, message: impl Into<String>) -> AclError {
    AclError {
        path: path.to_owned(),
        line,
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<String, AclError> {
    std::fs::read_to_string(path).map_err(|e| err(path, 0, format!("cannot read: {e}")))
}

impl Acl {
    pub fn load(model: &Path, policy: &Path) -> Result<Acl, AclError> {
        let mut acl = Self::parse_model(model, &read(model)?)?;
        acl.rules = acl.parse_policy(policy, &read(policy)?)?;
        Ok(acl)
    }

    fn parse_model(path: &Path, text: &str) -> Result<Acl, AclError> {
        let mut section = String::new();
        let (mut req, mut pol, mut effect, mut matcher) = (None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(path, n, format!("expected `key = value`, found {line:?}")));
            };
            let (key, value) = (key.trim(), value.trim());
            let fields = || value.split(',').map(|f| f.trim().to_owned()).collect::<Vec<_>>();
            match (section.as_str(), key) {
                ("request_definition", "r") => req = Some((n, fields())),
                ("policy_definition", "p") => pol = Some((n, fields())),
                ("policy_effect", "e") => effect = Some((n, value.replace(' ', ""))),
                ("matchers", "m") => matcher = Some((n, value.to_owned())),
                ("role_definition", _) => return Err(err(path, n, "roles (`g`) are not supported")),
                (s, k) => return Err(err(path, n, format!("unsupported key {k:?} in section [{s}]"))),
            }
        }
        let (_, request_fields) = req.ok_or_else(|| err(path, 0, "missing [request_definition] r = ..."))?;
        let (_, policy_fields) = pol.ok_or_else(|| err(path, 0, "missing [policy_definition] p = ..."))?;
        let (en, e) = effect.ok_or_else(|| err(path, 0, "missing [policy_effect] e = ..."))?;
        if e != "some(where(p.eft==allow))" {
            return Err(err(
                path,
                en,
                "only `some(where (p.eft == allow))` is supported as the policy effect",
            ));
        }
        let (mn, m) = matcher.ok_or_else(|| err(path, 0, "missing [matchers] m = ..."))?;
        let mut pairs = Vec::new();
        for term in m.split("&&") {
            let Some((l, r)) = term.split_once("==") else {
                return Err(err(
                    path,
                    mn,
                    format!(
                        "unsupported matcher term {:?}: use r.X == p.Y joined by &&",
                        term.trim()
                    ),
                ));
            };
            let field = |s: &str, prefix: &str, fields: &[String]| {
                s.trim()
                    .strip_prefix(prefix)
                    .and_then(|f| fields.iter().position(|x| x == f))
            };
            let (l, r) = (l.trim(), r.trim());
            let pair = match (field(l, "r.", &request_fields), field(r, "p.", &policy_fields)) {
                (Some(a), Some(b)) => (a, b),
                _ => match (field(r, "r.", &request_fields), field(l, "p.", &policy_fields)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        return Err(err(
                            path,
                            mn,
                            format!(
                                "matcher term {:?} does not compare a request field with a policy field",
                                term.trim()
                            ),
                        ));
                    }
                },
            };
            pairs.push(pair);
        }
        Ok(Acl {
            request_fields,
            policy_fields,
            matcher: pairs,
            rules: Vec::new(),
        })
    }

    fn parse_policy(&self, path: &Path, text: &str) -> Result<Vec<Vec<String>>, AclError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut cols: Vec<String> = line.split(',').map(|c| c.trim().to_owned()).collect();
            if cols[0] != "p" {
                return Err(err(
                    path,
                    i + 1,
                    format!("unsupported policy type {:?} (only `p` lines)", cols[0]),
                ));
            }
            cols.remove(0);
            if cols.len() != self.policy_fields.len() || cols.iter().any(String::is_empty) {
                return Err(err(
                    path,
                    i + 1,
                    format!(
                        "expected {} non-empty values ({}) after `p`, found {:?}",
                        self.policy_fields.len(),
                        self.policy_fields.join(", "),
                        line
                    ),
                ));
            }
            rules.push(cols);
        }
        Ok(rules)
    }

    /// True when some rule allows (subject, object, action).
    pub fn enforce(&self, subject: &str, object: &str, action: &str) -> bool {
        let request = [subject, object, action];
        if self.request_fields.len() != request.len() {
            return false;
        }
        self.rules
            .iter()
            .any(|rule| self.matcher.iter().all(|&(r, p)| request[r] == rule[p]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n[policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";

    fn load(policy: &str) -> Result<Acl, AclError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.conf"), MODEL).unwrap();
        std::fs::write(dir.path().join("policy.csv"), policy).unwrap();
        Acl::load(&dir.path().join("model.conf"), &dir.path().join("policy.csv"))
    }

    #[test]
    fn root_may_produce_and_consume_nobody_may_not() {
        let acl = load("p, root, *, produce\np, root, *, consume\n").unwrap();
        assert!(acl.enforce("root", OBJECT_ANY, ACT_PRODUCE));
        assert!(acl.enforce("root", OBJECT_ANY, ACT_CONSUME));
        assert!(!acl.enforce("nobody", OBJECT_ANY, ACT_PRODUCE));
        assert!(!acl.enforce("root", OBJECT_ANY, "delete"));
    }

    #[test]
    fn bad_policy_line_is_named() {
        let e = load("p, root, *, produce\n\n# comment\np, root, consume\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.to_string().contains("policy.csv:4"), "{e}");
        let e = load("g, alice, admin\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
