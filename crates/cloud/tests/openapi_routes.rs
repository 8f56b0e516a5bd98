//! Every route the cloud serves under /api (and every viewer URL it hands
//! out) is described in its OpenAPI document, and the document names no
//! route that does not exist.

use std::collections::BTreeSet;

/// The paths given to `.route(` in the router's source.
fn routes() -> BTreeSet<String> {
    let src = include_str!("../src/api/mod.rs");
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + 7..];
        let s = rest.trim_start();
        if let Some(s) = s.strip_prefix('"') {
            if let Some(end) = s.find('"') {
                out.insert(s[..end].to_owned());
            }
        }
    }
    out
}

#[test]
fn the_openapi_document_and_the_router_agree() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("../src/openapi.json")).unwrap();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let served = routes();
    assert!(served.len() > 20, "{served:?}");
    // Not part of the API: the device gateway, one-time
    // URLs handed to devices, the player page, and the files a playlist names.
    let outside = ["/ivc", "/api/openapi.json", "/upload/{token}", "/firmware/{token}", "/live/{token}/"];
    let mut missing = Vec::new();
    for r in &served {
        // Console pages are the web app's, not the API's.
        if !r.starts_with("/api/")
            && !r.starts_with("/live/")
            && !r.starts_with("/recordings/")
            && !r.starts_with("/record/")
        {
            continue;
        }
        if outside.contains(&r.as_str()) || r.ends_with("/{file}") || r == "/record/{session}/{seq}/{token}" {
            continue;
        }
        let r = r.replace("{session}", "{session_id}");
        if !documented.contains(&r) {
            missing.push(r);
        }
    }
    assert!(missing.is_empty(), "served but not in openapi.json: {missing:?}");
    let served_norm: BTreeSet<String> = served.iter().map(|r| r.replace("{session}", "{session_id}")).collect();
    let extra: Vec<&String> =
        documented.iter().filter(|d| !served_norm.contains(*d) && !d.ends_with("index.m3u8")).collect();
    assert!(extra.is_empty(), "in openapi.json but not served: {extra:?}");
}
