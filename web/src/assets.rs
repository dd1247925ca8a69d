//! The static assets in `web/assets`, embedded in the binary and served
//! under content-hashed addresses: `kontakt.css` is served as
//! `/assets/kontakt.<hash>.css`, where the hash is the first 10 hex digits
//! of the SHA-256 of the bytes served. Browsers may keep them for a year
//! (`immutable`), because a changed file gets a new address; an address
//! with a stale or unknown hash answers 404, so that a page of one deploy
//! never runs the script of another against a changed protocol.
//!
//! The browser code is ES modules without a build step. A module's imports
//! of another of ours (`import { x } from "./protocol.js"`) are rewritten
//! once, when the registry is built, to that module's hashed address. The
//! modules are processed in dependency order, so a module's hash covers what
//! it imports: a change in `protocol.js` gives `chat.js` and `meeting.js`
//! new addresses too.
//!
//! Pages link assets with [`url`]: `assets::url("meeting.js")`.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// Every embedded file, by its name in `web/assets`.
const SOURCES: &[(&str, &str)] = &[
    ("kontakt.css", include_str!("../assets/kontakt.css")),
    ("kontakt.js", include_str!("../assets/kontakt.js")),
    ("protocol.js", include_str!("../assets/protocol.js")),
    ("chat.js", include_str!("../assets/chat.js")),
    ("call.js", include_str!("../assets/call.js")),
    ("meeting.js", include_str!("../assets/meeting.js")),
    ("precheck.js", include_str!("../assets/precheck.js")),
    ("chat-page.js", include_str!("../assets/chat-page.js")),
    ("console.js", include_str!("../assets/console.js")),
];

/// What browsers are told about caching a hashed asset.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// How many hex digits of the SHA-256 go into an address.
const HASH_DIGITS: usize = 10;

/// One asset as served.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Its address, `/assets/{stem}.{hash}.{ext}`.
    pub url: String,
    pub content_type: &'static str,
    /// The bytes served: for a module, with its imports rewritten.
    pub body: String,
}

/// The assets by name, and the names by the file part of their address.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<String, Asset>,
    by_file: HashMap<String, String>,
}

/// Why a set of sources cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildError {
    /// `module` imports `import`, which is not one of the sources.
    UnknownImport { module: String, import: String },
    /// The modules import each other in a circle through `module`.
    Cycle { module: String },
}

static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::build(SOURCES).expect("the embedded assets import only each other"));

/// Builds the registry of the embedded assets now rather than on the first
/// request, so that a broken import stops the server at startup.
pub fn init() {
    LazyLock::force(&REGISTRY);
}

/// The hashed address of the embedded asset `name` (`"meeting.js"`).
///
/// # Panics
/// When there is no such asset: a page links a file that is not in
/// [`SOURCES`], which the pages' tests find.
pub fn url(name: &str) -> &'static str {
    match REGISTRY.get(name) {
        Some(asset) => &asset.url,
        None => panic!("no embedded asset {name}"),
    }
}

/// The route of every asset.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    init();
    Router::new().route("/assets/{file}", get(serve))
}

async fn serve(Path(file): Path<String>) -> Response {
    match REGISTRY.by_file(&file) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            asset.body.clone(),
        )
            .into_response(),
        None => AppError::NotFound.into_response(),
    }
}

impl Registry {
    /// Hashes `sources` (name, text), rewriting the modules' imports of each
    /// other to hashed addresses, dependencies first.
    pub fn build(sources: &[(&str, &str)]) -> Result<Registry, BuildError> {
        let texts: BTreeMap<&str, &str> = sources.iter().copied().collect();
        let mut registry = Registry {
            by_name: HashMap::new(),
            by_file: HashMap::new(),
        };
        for name in texts.keys() {
            registry.add(name, &texts, &mut Vec::new())?;
        }
        Ok(registry)
    }

    /// Adds `name` after everything it imports; `path` holds the modules
    /// being added further up, to find a circle.
    fn add(
        &mut self,
        name: &str,
        texts: &BTreeMap<&str, &str>,
        path: &mut Vec<String>,
    ) -> Result<(), BuildError> {
        if self.by_name.contains_key(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(BuildError::Cycle {
                module: name.to_owned(),
            });
        }
        let text = texts[name];
        let body = if name.ends_with(".js") {
            path.push(name.to_owned());
            let mut rewritten = String::with_capacity(text.len());
            let mut rest = 0;
            for (start, end, import) in imports(text) {
                if !texts.contains_key(import) {
                    return Err(BuildError::UnknownImport {
                        module: name.to_owned(),
                        import: import.to_owned(),
                    });
                }
                self.add(import, texts, path)?;
                rewritten.push_str(&text[rest..start]);
                rewritten.push_str(&self.by_name[import].url);
                rest = end;
            }
            rewritten.push_str(&text[rest..]);
            path.pop();
            rewritten
        } else {
            text.to_owned()
        };
        let digest = Sha256::digest(body.as_bytes());
        let hash: String = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .chars()
            .take(HASH_DIGITS)
            .collect();
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        let file = format!("{stem}.{hash}.{ext}");
        let asset = Asset {
            url: format!("/assets/{file}"),
            content_type: content_type(ext),
            body,
        };
        self.by_file.insert(file, name.to_owned());
        self.by_name.insert(name.to_owned(), asset);
        Ok(())
    }

    /// The asset `name` (`"chat.js"`).
    pub fn get(&self, name: &str) -> Option<&Asset> {
        self.by_name.get(name)
    }

    /// The asset whose address ends in `file` (`"chat.0123456789.js"`).
    pub fn by_file(&self, file: &str) -> Option<&Asset> {
        self.by_file
            .get(file)
            .and_then(|name| self.by_name.get(name))
    }

    /// Every asset's name and address.
    pub fn urls(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_name
            .iter()
            .map(|(name, asset)| (name.as_str(), asset.url.as_str()))
    }
}

/// The embedded assets' names and addresses, for tests and diagnostics.
pub fn all() -> Vec<(&'static str, &'static str)> {
    REGISTRY.urls().collect()
}

fn content_type(ext: &str) -> &'static str {
    match ext {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// The relative imports of our own modules in `text`: the byte range of
/// each specifier (without its quotes) and the file it names. Recognised are
/// `from "./x.js"` (after `import { .. }` or `export { .. }`), a bare
/// `import "./x.js"`, and `import("./x.js")`; a string that merely contains
/// `./x.js` elsewhere is left alone.
fn imports(text: &str) -> Vec<(usize, usize, &str)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let quote = bytes[i];
        if (quote == b'"' || quote == b'\'') && text[i + 1..].starts_with("./") {
            let start = i + 1;
            if let Some(len) = text[start..].find(quote as char) {
                let end = start + len;
                let before = text[..i].trim_end();
                let keyword = before.ends_with("from")
                    || before.ends_with("import")
                    || before.ends_with("import(");
                let spec = &text[start..end];
                // A specifier with a further path is not one of ours.
                if keyword && !spec[2..].contains(['/', '\n']) {
                    found.push((start, end, &spec[2..]));
                }
                i = end + 1;
                continue;
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(url: &str) -> &str {
        url.strip_prefix("/assets/").unwrap()
    }

    #[test]
    fn an_address_holds_the_hash_of_the_bytes_served() {
        let registry = Registry::build(&[("site.css", "body { color: black }")]).unwrap();
        let asset = registry.get("site.css").unwrap();
        let digest = Sha256::digest(b"body { color: black }");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(asset.url, format!("/assets/site.{}.css", &hex[..10]));
        assert_eq!(asset.content_type, "text/css; charset=utf-8");
    }

    #[test]
    fn the_hash_changes_with_the_content() {
        let one = Registry::build(&[("a.js", "export const a = 1;")]).unwrap();
        let two = Registry::build(&[("a.js", "export const a = 2;")]).unwrap();
        assert_ne!(one.get("a.js").unwrap().url, two.get("a.js").unwrap().url);
        let again = Registry::build(&[("a.js", "export const a = 1;")]).unwrap();
        assert_eq!(one.get("a.js").unwrap().url, again.get("a.js").unwrap().url);
    }

    #[test]
    fn imports_are_rewritten_to_hashed_addresses_and_carry_their_hash() {
        let sources = |lib: &'static str| {
            [
                ("lib.js", lib),
                (
                    "main.js",
                    "import { x } from \"./lib.js\";\nimport './side.js';\nconst s = \"./lib.js\";\nconst m = import(\"./lib.js\");\n",
                ),
                ("side.js", "export {};"),
            ]
        };
        let one = Registry::build(&sources("export const x = 1;")).unwrap();
        let lib = one.get("lib.js").unwrap().url.clone();
        let side = one.get("side.js").unwrap().url.clone();
        let main = &one.get("main.js").unwrap().body;
        assert_eq!(
            main,
            &format!(
                "import {{ x }} from \"{lib}\";\nimport '{side}';\nconst s = \"./lib.js\";\nconst m = import(\"{lib}\");\n"
            ),
            "imports rewritten, a plain string left alone"
        );
        // A change in the imported module changes the importer's address.
        let two = Registry::build(&sources("export const x = 2;")).unwrap();
        assert_ne!(
            one.get("main.js").unwrap().url,
            two.get("main.js").unwrap().url
        );
        assert_eq!(
            one.get("side.js").unwrap().url,
            two.get("side.js").unwrap().url
        );
    }

    #[test]
    fn unknown_imports_and_circles_are_refused() {
        assert_eq!(
            Registry::build(&[("a.js", "import \"./gone.js\";")]).unwrap_err(),
            BuildError::UnknownImport {
                module: "a.js".into(),
                import: "gone.js".into()
            }
        );
        let circle = Registry::build(&[
            ("a.js", "import \"./b.js\";"),
            ("b.js", "import \"./a.js\";"),
        ]);
        assert!(
            matches!(circle, Err(BuildError::Cycle { .. })),
            "{circle:?}"
        );
    }

    #[test]
    fn only_the_current_address_is_served() {
        let registry = Registry::build(&[("a.js", "export const a = 1;")]).unwrap();
        let url = registry.get("a.js").unwrap().url.clone();
        assert!(registry.by_file(file_of(&url)).is_some());
        assert!(registry.by_file("a.js").is_none(), "no unhashed address");
        assert!(
            registry.by_file("a.0000000000.js").is_none(),
            "a stale hash"
        );
        assert!(
            registry.by_file("b.0000000000.js").is_none(),
            "an unknown file"
        );
    }

    #[test]
    fn the_embedded_assets_build_and_every_module_import_resolves() {
        let registry = Registry::build(SOURCES).unwrap();
        for (name, _) in SOURCES {
            let asset = registry.get(name).unwrap();
            assert!(
                !asset.body.contains("from \"./"),
                "{name} keeps a relative import"
            );
            assert!(
                !asset.body.contains("from './"),
                "{name} keeps a relative import"
            );
        }
    }

    #[tokio::test]
    async fn a_stale_hash_answers_404_and_the_current_one_is_immutable() {
        let url = url("kontakt.css");
        let ok = serve(Path(file_of(url).to_owned())).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], IMMUTABLE);
        let stale = serve(Path("kontakt.0000000000.css".to_owned())).await;
        assert_eq!(stale.status(), 404);
        let bare = serve(Path("kontakt.css".to_owned())).await;
        assert_eq!(bare.status(), 404);
    }
}
