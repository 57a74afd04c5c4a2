//! The web client's files, compiled into the binary (`web/`), and how they are served:
//! content types, caching and the security headers that keep the page to itself.
//!
//! Caching: the page (`/`) is revalidated on every load (`no-cache` with an `ETag`, so
//! a reload costs a 304), and it names its script and style sheet with a version taken
//! from their content (`app.js?v=…`), so a browser keeps those for a year and still
//! never runs a stale script after an upgrade.

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

/// The page may load only its own script, style and icon, and talk only to its own
/// server; no frames, no inline script, no forms posted anywhere. (`ws:`/`wss:` are
/// listed because older browsers do not count them as `'self'`.)
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long a versioned asset may be kept (a year: its URL changes with its content).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: Vec<u8>,
    /// Short content hash: the `ETag` and the `?v=` version.
    version: String,
}

impl Asset {
    fn new(content_type: &'static str, body: Vec<u8>) -> Asset {
        let digest = Sha256::digest(&body);
        let version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            content_type,
            body,
            version,
        }
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// The files of the web client, by path.
pub struct Assets {
    files: HashMap<&'static str, Asset>,
}

/// Source files, with the path they are served at and their type. The page refers to
/// the others as `{{v:PATH}}`, replaced by their versioned URL at start.
const INDEX: &str = include_str!("web/index.html");
const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("web/style.css"),
    ),
    ("/icon.svg", "image/svg+xml", include_bytes!("web/icon.svg")),
];

impl Default for Assets {
    fn default() -> Self {
        Assets::new()
    }
}

impl Assets {
    /// The embedded files, with the page's references versioned.
    pub fn new() -> Assets {
        let mut files = HashMap::new();
        let mut index = INDEX.to_string();
        for (path, content_type, body) in FILES {
            let asset = Asset::new(content_type, body.to_vec());
            index = index.replace(
                &format!("{{{{v:{path}}}}}"),
                &format!("{path}?v={}", asset.version),
            );
            files.insert(path, asset);
        }
        files.insert(
            "/",
            Asset::new("text/html; charset=utf-8", index.into_bytes()),
        );
        Assets { files }
    }

    /// Total size of what a first visit downloads (every file once).
    pub fn total_bytes(&self) -> usize {
        self.files.values().map(|asset| asset.body.len()).sum()
    }

    /// The response to `req`: a file, a 304, a 405 for other methods on a file, or 404.
    pub fn respond(&self, req: &HttpRequest) -> HttpResponse {
        let Some(asset) = self.files.get(req.path()) else {
            return not_found();
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return HttpResponse::MethodNotAllowed()
                .insert_header((header::ALLOW, "GET, HEAD"))
                .finish();
        }
        let versioned = req
            .query_string()
            .split('&')
            .any(|pair| pair.strip_prefix("v=") == Some(asset.version.as_str()));
        let etag = asset.etag();
        let fresh = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == etag
            });
        let mut response = HttpResponse::build(if fresh {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        });
        response
            .insert_header((header::ETAG, etag))
            .insert_header((
                header::CACHE_CONTROL,
                if versioned { IMMUTABLE } else { "no-cache" },
            ))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"));
        if req.path() == "/" {
            response
                .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                .insert_header((header::X_FRAME_OPTIONS, "DENY"));
        }
        if fresh {
            return response.finish();
        }
        response
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ))
            .body(asset.body.clone())
    }
}

/// Everything that is not a file of the client.
pub fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body("not found\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use actix_web::test::TestRequest;

    fn body_text(response: HttpResponse) -> String {
        let bytes = response.into_body().try_into_bytes().unwrap_or_default();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_page_names_versioned_assets() {
        let assets = Assets::new();
        let page = body_text(assets.respond(&TestRequest::get().uri("/").to_http_request()));
        assert!(!page.contains("{{v:"), "unreplaced reference in the page");
        for path in ["/app.js", "/style.css", "/icon.svg"] {
            let version = &assets.files[path].version;
            assert!(
                page.contains(&format!("{path}?v={version}")),
                "{path} not versioned"
            );
        }
    }

    #[test]
    fn a_first_visit_is_small() {
        let total = Assets::new().total_bytes();
        assert!(total < 100 * 1024, "{total} bytes");
    }

    #[test]
    fn caching_follows_the_version() {
        let assets = Assets::new();
        let version = assets.files["/app.js"].version.clone();
        let get = |uri: &str| assets.respond(&TestRequest::get().uri(uri).to_http_request());
        let cache = |response: &HttpResponse| {
            response
                .headers()
                .get(header::CACHE_CONTROL)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        let versioned = get(&format!("/app.js?v={version}"));
        assert_eq!(versioned.status(), StatusCode::OK);
        assert_eq!(cache(&versioned), IMMUTABLE);
        assert_eq!(
            versioned.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(cache(&get("/app.js?v=old")), "no-cache");
        assert_eq!(cache(&get("/")), "no-cache");
        assert!(get("/")
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY));
    }

    #[test]
    fn a_known_etag_gets_not_modified() {
        let assets = Assets::new();
        let etag = assets.files["/style.css"].etag();
        let response = assets.respond(
            &TestRequest::get()
                .uri("/style.css")
                .insert_header((header::IF_NONE_MATCH, format!("\"x\", {etag}")))
                .to_http_request(),
        );
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(body_text(response), "");
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let assets = Assets::new();
        for path in [
            "/index.html",
            "/app.js/",
            "/../Cargo.toml",
            "/ws2",
            "/favicon.ico",
        ] {
            let response = assets.respond(&TestRequest::get().uri(path).to_http_request());
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let post = assets.respond(&TestRequest::post().uri("/").to_http_request());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
