//! Story: refusals counted in the database by kind and reason, over whatever JSON
//! agents put in `detail`.

use knockgate_controller::name::AgentName;
use knockgate_controller::store::{NewAuditEvent, RefusalCount, RefusalKinds, Store};
use serde_json::{Value, json};

use super::at;

const KINDS: RefusalKinds<'static> = RefusalKinds {
    controller: &[
        "auth.refused",
        "enrol.refused",
        "otk.refused",
        "config.refused",
    ],
    reported: &["spa.rejected", "knock.rejected"],
    tallies: &["spa.refused_summary"],
};

/// A row the controller wrote (`agent` only names whom it concerns).
fn controller(s: i64, kind: &str, agent: Option<&str>, detail: Value) -> NewAuditEvent {
    NewAuditEvent {
        at: at(s),
        agent: agent.map(|a| AgentName::new(a).unwrap()),
        agent_seq: None,
        kind: kind.into(),
        user: None,
        src: None,
        detail,
    }
}

/// A row `agent` reported as its event `seq`.
fn reported(agent: &str, seq: u64, s: i64, kind: &str, detail: Value) -> NewAuditEvent {
    NewAuditEvent {
        agent_seq: Some(seq),
        ..controller(s, kind, Some(agent), detail)
    }
}

fn count(kind: &str, reason: &str, count: u64) -> RefusalCount {
    RefusalCount {
        kind: kind.into(),
        reason: reason.into(),
        count,
    }
}

pub async fn refusals_are_counted_by_kind_and_reason(store: &Store) {
    let no_cert = "a client certificate is required";
    let rows = [
        // The controller's own: a throttled row stands for itself and those it left out.
        controller(
            -10,
            "auth.refused",
            None,
            json!({"reason": no_cert, "suppressed": 4}),
        ),
        controller(-20, "auth.refused", None, json!({"reason": no_cert})),
        controller(-7200, "enrol.refused", None, json!({"reason": "too old"})),
        controller(
            -5,
            "config.refused",
            Some("gw1"),
            json!({"version": 3, "reason": "bad"}),
        ),
        controller(
            -5,
            "otk.refused",
            Some("gw1"),
            json!({"reason": "used", "suppressed": "x"}),
        ),
        controller(
            -5,
            "otk.reuse",
            Some("gw1"),
            json!({"reason": "granted twice"}),
        ),
        // Agents': one row is one refusal, whatever it claims.
        reported("gw1", 1, -30, "spa.rejected", json!({"reason": "bad_tag"})),
        reported(
            "gw1",
            2,
            -40,
            "spa.rejected",
            json!({"reason": "bad_tag", "suppressed": 99}),
        ),
        reported("gw1", 3, -50, "spa.rejected", json!({"reason": 5})),
        reported(
            "gw1",
            4,
            -7200,
            "spa.rejected",
            json!({"reason": "bad_tag"}),
        ),
        reported("gw1", 5, -5, "auth.refused", json!({"reason": "forged"})),
        reported("gw1", 6, -5, "spa.accepted", json!({})),
        reported(
            "gw2",
            1,
            -1,
            "knock.rejected",
            json!({"reason": "consumed_store"}),
        ),
        // Tallies: only numbers in an object count, clamped at 0.
        reported(
            "gw1",
            7,
            -60,
            "spa.refused_summary",
            json!({"port": 62201, "counts": {"bad_tag": 5, "malformed": 7, "odd": "x", "neg": -3}}),
        ),
        reported(
            "gw2",
            2,
            -70,
            "spa.refused_summary",
            json!({"counts": [1, 2]}),
        ),
        reported(
            "gw2",
            3,
            -80,
            "spa.refused_summary",
            json!({"counts": "lots"}),
        ),
        reported(
            "gw2",
            4,
            -90,
            "spa.refused_summary",
            json!({"counts": {"malformed": 3}}),
        ),
        reported(
            "gw2",
            5,
            -7200,
            "spa.refused_summary",
            json!({"counts": {"malformed": 50}}),
        ),
    ];
    for row in &rows {
        store.append_audit(row).await.unwrap();
    }

    let hour = store
        .count_refusals(&KINDS, Some(at(-3600)), 100)
        .await
        .unwrap();
    assert_eq!(
        hour,
        [
            count("spa.refused_summary", "malformed", 10),
            count("auth.refused", no_cert, 6),
            count("spa.refused_summary", "bad_tag", 5),
            count("spa.rejected", "bad_tag", 2),
            count("config.refused", "bad", 1),
            count("knock.rejected", "consumed_store", 1),
            count("otk.refused", "used", 1),
            count("spa.rejected", "", 1),
        ]
    );

    let top = store
        .count_refusals(&KINDS, Some(at(-3600)), 2)
        .await
        .unwrap();
    assert_eq!(top, hour[..2]);

    let ever = store.count_refusals(&KINDS, None, 100).await.unwrap();
    assert!(ever.contains(&count("spa.refused_summary", "malformed", 60)));
    assert!(ever.contains(&count("spa.rejected", "bad_tag", 3)));
    assert!(ever.contains(&count("enrol.refused", "too old", 1)));

    let none = RefusalKinds {
        controller: &[],
        reported: &[],
        tallies: &[],
    };
    assert!(
        store
            .count_refusals(&none, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let only_tallies = RefusalKinds {
        tallies: KINDS.tallies,
        ..none
    };
    assert_eq!(
        store
            .count_refusals(&only_tallies, Some(at(-3600)), 100)
            .await
            .unwrap(),
        [
            count("spa.refused_summary", "malformed", 10),
            count("spa.refused_summary", "bad_tag", 5),
        ]
    );
}
