//! End to end: admin identities are listed, added and revoked with knockadm, and a
//! revoked admin's certificate is refused by the running controller.

use std::os::unix::fs::PermissionsExt;

use knockgate_tests::agent::Workdir;
use knockgate_tests::controller::Controller;
use knockgate_tests::fleet::Fleet;

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap (scripts/test.sh runs it)"]
fn admins_are_added_listed_and_revoked() {
    let fleet = Fleet::new(&["ctl"]);
    let work = Workdir::new();
    let addr = fleet.host(0).v4.to_string();
    let ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &addr, None);

    let list = ctl.knockadm_json(&["admin", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["admin"],
        "the data dir's admin is pinned at first run"
    );

    let bob = work.path.join("bob.pem");
    let bob_arg = bob.to_str().expect("path");
    let out = ctl.knockadm(&["admin", "add", "bob", "--out", bob_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&bob)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let as_bob = ctl.knockadm(&["--identity", bob_arg, "agent", "list"]);
    assert!(
        as_bob.status.success(),
        "{}",
        String::from_utf8_lossy(&as_bob.stderr)
    );
    let again = ctl.knockadm(&["admin", "add", "bob", "--out", bob_arg]);
    assert_eq!(again.status.code(), Some(64), "the file exists: refused");

    assert!(ctl.knockadm(&["admin", "revoke", "bob"]).status.success());
    let as_bob = ctl.knockadm(&["--identity", bob_arg, "agent", "list"]);
    let err = String::from_utf8_lossy(&as_bob.stderr);
    assert!(!as_bob.status.success() && err.contains("revoked"), "{err}");
    let list = ctl.knockadm_json(&["admin", "list"]);
    let bob_row = list
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["name"] == "bob")
        .cloned()
        .expect("bob listed");
    assert!(bob_row["revoked_at"].is_string(), "{bob_row}");

    // The last admin standing cannot be revoked: nobody could act any more.
    let last = ctl.knockadm(&["admin", "revoke", "admin"]);
    let err = String::from_utf8_lossy(&last.stderr);
    assert!(
        !last.status.success() && err.contains("last admin"),
        "{err}"
    );
    let audit = ctl.knockadm_json(&["audit", "--kind", "admin.admin"]);
    let kinds: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"admin.admin.add") && kinds.contains(&"admin.admin.revoke"),
        "{kinds:?}"
    );
}
