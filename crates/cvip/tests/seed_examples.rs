//! Every XML example in the seed (extracted verbatim into tests/seed/)
//! parses through the tolerant path; the repairs are reported, and what was
//! recovered is what the example meant.

use cvip::Value;
use cvip::{parse, parse_analytics, Message};
use std::path::PathBuf;

fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seed");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn get(name: &str) -> Message {
    let (_, b) = examples().into_iter().find(|(n, _)| n.contains(name)).unwrap();
    parse(&b).unwrap().value
}

#[test]
fn every_example_parses_and_reports_repairs() {
    let ex = examples();
    assert_eq!(ex.len(), 24);
    let mut repaired = 0;
    for (name, body) in &ex {
        let repairs = if name.contains("analytics") {
            parse_analytics(body).unwrap_or_else(|e| panic!("{name}: {e}")).repairs
        } else {
            parse(body).unwrap_or_else(|e| panic!("{name}: {e}")).repairs
        };
        println!("{name}: {} repairs", repairs.len());
        for r in &repairs {
            println!("    {r}");
        }
        if !repairs.is_empty() {
            repaired += 1;
        }
    }
    // The well-formed ones need none; at least these are malformed.
    assert!(repaired >= 10, "{repaired}");
}

#[test]
fn malformed_examples_recover_their_meaning() {
    // `</param></param>>` and a `<methodName>` closed by `<methodName>`.
    let Message::Response { params } = get("03_system_listservices_response") else { panic!() };
    let names: Vec<_> = params[0].as_array().unwrap().iter().map(|v| v.to_text()).collect();
    assert_eq!(names, ["cvip", "cviNetwork", "cviNetwork.1", "cviNetwork.2", "cviNetwork.2", "cviNvr"]);
    let Message::Call { method, .. } = get("02_system_listservices_call") else { panic!() };
    assert_eq!(method, "system.listServices");

    // An unclosed struct and a run of stray </param>.
    let Message::Response { params } = get("05_system_listevents_response") else { panic!() };
    let groups = params[0].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[1].as_struct().unwrap().str("name").as_deref(), Some("Video Events"));

    // `</value></struct>` transposed.
    let Message::Response { params } = get("11_service_listproperties_response") else { panic!() };
    let props = params[0].as_array().unwrap();
    assert_eq!(props.len(), 2);
    assert_eq!(props[1].as_struct().unwrap().get("value"), Some(&Value::UInt(1111)));
    assert_eq!(props[1].as_struct().unwrap().str("range").as_deref(), Some("0,65000,1"));

    // `<array></data>` with no `<value>` around it.
    let Message::Call { method, params } = get("16_service_getproperties_call") else { panic!() };
    assert_eq!(method, "cviVideo.1.getProperties");
    assert_eq!(params, vec![Value::Array(vec!["parameter_1_AsExemple".into()])]);

    // `<iint>` and a `<name>` closed by `</string>`.
    let Message::Call { params, .. } = get("18_service_setproperties_call") else { panic!() };
    let s = params[0].as_struct().unwrap();
    assert_eq!(s.get("parameter_1_AsExemple"), Some(&Value::UInt(18)));
    assert_eq!(s.get("parameter_2_AsExemple"), Some(&Value::Int(64)));
    assert_eq!(s.str("parameter_3_AsExemple").as_deref(), Some("AB"));

    // The `<xml>` wrapper, `value>` with its `<` lost, no `</params>`.
    let Message::Call { method, params } = get("23_ptz_cmd_call") else { panic!() };
    assert_eq!(method, "cviPTZ.cmd");
    assert_eq!(params.len(), 6);
    assert_eq!(params[0].to_text(), "00000001-0000-0000-0001EC901E30B");
    assert_eq!(params[2], Value::Int(15));
    assert_eq!(params[5], Value::Int(9));

    // `- ` before every line and `/methodResponse>` with no `<`.
    let Message::Response { params } = get("21_cviupdatefirmware_getprogressinfo_response") else { panic!() };
    let s = params[0].as_array().unwrap()[0].as_struct().unwrap();
    assert_eq!(s.str("state").as_deref(), Some("FWUPDUNINITIALIZED"));
    assert_eq!(s.str("totalBytesProgress").as_deref(), Some("0"));

    // listParameters: `<int>Motion</int>`, an unclosed `<name>`, a tag cut
    // by a line break (`</mem`).
    let Message::Response { params } = get("15_service_listparameters_response") else { panic!() };
    let top = params[0].as_struct().unwrap();
    let call = top.get("methodCall").unwrap().as_array().unwrap();
    assert_eq!(call.len(), 3);
    assert_eq!(call[2].as_struct().unwrap().str("id").as_deref(), Some("eventValue"));
    let resp = top.get("MethodResponse").unwrap().as_array().unwrap();
    assert_eq!(resp.len(), 2);
    assert_eq!(resp[1].as_struct().unwrap().str("units").as_deref(), Some("n/a"));
}

#[test]
fn analytics_example() {
    let (_, b) = examples().into_iter().find(|(n, _)| n.contains("analytics")).unwrap();
    let p = parse_analytics(&b).unwrap();
    assert_eq!(p.value.source_guid, "00000001-0000-0000-0001EC901E30B");
    // The first <param> holds two values (the flag and the boxes): read as
    // two parameters, with a repair.
    assert_eq!(p.value.params.len(), 3);
    assert_eq!(p.value.params[0], Value::Bool(true));
    let boxes = p.value.params[1].as_array().unwrap();
    assert_eq!(boxes[0].as_struct().unwrap().int("Right"), Some(50));
    assert_eq!(p.value.params[2].as_array().unwrap().len(), 4);
    assert!(!p.repairs.is_empty());
}
