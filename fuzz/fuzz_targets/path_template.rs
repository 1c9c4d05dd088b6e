//! Path templates (`upstream_path`, lease paths): parsing, rendering from captures, and
//! `can_render`.
//!
//! Input: `template \n comma-separated params \n a path`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::fields;
use tollway_protocol::path_template::PathTemplate;

fuzz_target!(|data: &[u8]| {
    let [template, params, path] = fields::<3>(data);
    let (Ok(template), Ok(params), Ok(path)) = (
        std::str::from_utf8(template),
        std::str::from_utf8(params),
        std::str::from_utf8(path),
    ) else {
        return;
    };
    let params: Vec<&str> = params.split(',').collect();
    let Ok(t) = PathTemplate::parse(template, &params) else {
        return;
    };
    for p in t.params() {
        assert!(params.contains(&p));
    }
    let captures: Vec<(String, String)> = t
        .params()
        .map(|p| (p.to_owned(), format!("v{}", p.len())))
        .collect();
    let rendered = t.render(&captures);
    assert!(rendered.starts_with('/'));
    assert!(
        t.can_render(&rendered),
        "{template:?} rendered {rendered:?}"
    );
    if t.can_render(path) {
        assert!(path.starts_with('/'));
    }
});
