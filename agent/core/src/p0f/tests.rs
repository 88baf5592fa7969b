use std::sync::LazyLock;

use etherparse::{
    IpHeaders, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, TcpOptionElement as Opt,
};
use proptest::prelude::*;

use super::*;
use crate::packet::LinkType;

const FP: &str = "/etc/p0f/p0f.fp";

/// The real database from Debian's p0f package; a missing file fails, never skips.
static REAL: LazyLock<Database> = LazyLock::new(|| {
    let text = std::fs::read_to_string(FP)
        .unwrap_or_else(|e| panic!("cannot read {FP} ({e}): run `apt-get install p0f`"));
    Database::parse(&text).unwrap_or_else(|e| panic!("{FP}: {e}"))
});

const SMALL: &str = "\
classes = win,unix,other
[mtu]
label = Ethernet or modem
sig   = 1500
[tcp:request]
label = s:unix:Linux:3.11 and newer
sig   = *:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df,id+:0
label = s:!:NMap:SYN scan
sys   = @unix,@win
sig   = *:64-:0:1460:1024,0:mss::0
[tcp:response]
label = s:unix:Linux:3.x
sig   = *:64:0:*:mss*10,0:mss:df:0
[http:request]
ua_os = Linux,Windows,iOS=[iPad]
label = s:!:Firefox:2.x
sys   = Windows,@unix
sig   = *:Host,User-Agent,Accept=[,*/*;q=],?Accept-Language::Firefox/
";

const LINUX_OPTS: [Opt; 5] = [
    Opt::MaximumSegmentSize(1460),
    Opt::SelectiveAcknowledgementPermitted,
    Opt::Timestamp(0x1234_5678, 0),
    Opt::Noop,
    Opt::WindowScale(7),
];

const WINDOWS_OPTS: [Opt; 6] = [
    Opt::MaximumSegmentSize(1460),
    Opt::Noop,
    Opt::WindowScale(8),
    Opt::Noop,
    Opt::Noop,
    Opt::SelectiveAcknowledgementPermitted,
];

/// What to build: a SYN from 10.0.0.2 (or fd..::2) to port 22.
#[derive(Clone, Copy)]
struct Pkt<'a> {
    v6: bool,
    ttl: u8,
    df: bool,
    id: u16,
    flow: u32,
    window: u16,
    opts: &'a [Opt],
    ack: bool,
}

/// Linux 3.11+ on Ethernet: window 20 * MSS, ws 7, DF with a non-zero ID.
const LINUX: Pkt = Pkt {
    v6: false,
    ttl: 64,
    df: true,
    id: 0x4d2e,
    flow: 0,
    window: 29200,
    opts: &LINUX_OPTS,
    ack: false,
};

fn frame(p: Pkt) -> Vec<u8> {
    let ip = if p.v6 {
        let h = Ipv6Header {
            hop_limit: p.ttl,
            flow_label: Ipv6FlowLabel::try_new(p.flow).unwrap(),
            source: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            destination: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        IpHeaders::Ipv6(h, Default::default())
    } else {
        let h = Ipv4Header {
            time_to_live: p.ttl,
            dont_fragment: p.df,
            identification: p.id,
            source: [10, 0, 0, 2],
            destination: [10, 0, 0, 1],
            ..Default::default()
        };
        IpHeaders::Ipv4(h, Default::default())
    };
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ip(ip)
        .tcp(40000, 22, 0x1234_5678, p.window)
        .syn();
    if p.ack {
        b = b.ack(7);
    }
    let mut out = Vec::new();
    b.options(p.opts).unwrap().write(&mut out, &[]).unwrap();
    out
}

fn observe(p: Pkt) -> Syn {
    syn(LinkType::Ethernet, &frame(p)).expect("a syn")
}

/// (label, generic, fuzzy) of the real database's match.
fn os(p: Pkt) -> Option<(&'static str, bool, bool)> {
    REAL.classify(&observe(p))
        .map(|m| (m.label(), m.generic, m.fuzzy))
}

#[test]
fn real_database_parses() {
    let n = REAL.len();
    assert!(n >= 90, "{FP}: only {n} tcp:request signatures");
}

#[test]
fn other_sections_are_skipped() {
    assert_eq!(Database::parse(SMALL).unwrap().len(), 2);
    assert!(Database::parse("").unwrap().is_empty());
}

#[test]
fn errors_name_the_line_and_the_reason() {
    #[rustfmt::skip]
    let cases = [
        ("*:64:0:*:mss*20", "*:xx:0:*:mss*20", r#"line 7: bad ittl "xx""#),
        ("df,id+:0", "df,id*:0", r#"line 7: unknown quirk "id*""#),
        ("ts,nop", "tsx,nop", r#"line 7: unknown tcp option "tsx""#),
        ("*:64:0:*:mss", "6:64:0:*:mss", r#"line 7: quirk "df" is not valid for ipv6"#),
        (":0\nlabel = s:!", "\nlabel = s:!", "line 7: expected 8 fields separated by ':', found 7"),
        ("mss*20,7", "mss*20", r#"line 7: bad wsize "mss*20""#),
        ("ws:df", "ws,eol+0,nop:df", "line 7: bad olayout (eol must come last) "),
        ("s:unix:Linux", "s:bsd:Linux", r#"line 6: unknown class "bsd""#),
        ("classes = win,unix,other", "classes = win,other", r#"line 6: unknown class "unix""#),
        ("[tcp:response]", "[tcp:sideways]", r#"line 11: unknown section "[tcp:sideways]""#),
        ("ua_os =", "ua_os", r#"line 15: expected "key = value", a [section] or a ; comment"#),
        ("[tcp:request]\nlabel", "[tcp:request]\nlabels", r#"line 6: unknown key "labels""#),
        ("label = s:unix:Linux:3.11 and newer\n", "", r#"line 6: misplaced "sig""#),
        ("[tcp:request]\n", "[tcp:request]\nsys = @unix\n", r#"line 6: misplaced "sys""#),
    ];
    for (from, to, want) in cases {
        let text = SMALL.replacen(from, to, 1);
        assert_ne!(text, SMALL, "{from}");
        let got = Database::parse(&text).unwrap_err();
        assert!(got.to_string().starts_with(want), "{from}: {got}");
    }
}

#[test]
fn linux_syn_is_linux() {
    let s = observe(LINUX);
    let sig = "4:64+0:0:1460:mss*20,7:mss,sok,ts,nop,ws:df,id+:0";
    assert_eq!(s.to_string(), sig);
    let m = REAL.classify(&s).expect("a match");
    let want = (
        "Linux",
        "3.11 and newer",
        Some("unix"),
        "Linux 3.11 and newer",
    );
    assert_eq!((m.name(), m.flavor(), m.class(), m.label()), want);
    assert_eq!((m.generic, m.fuzzy, m.distance), (false, false, 0));
}

#[test]
fn current_linux_window_is_generic_linux() {
    // Since 4.19 Linux opens with 64240 = 44 * 1460, newer than p0f 3.09b's 3.11+ sig
    // (mss*20): only a catch-all label fits.
    let current = Pkt {
        window: 64240,
        ..LINUX
    };
    assert_eq!(os(current), Some(("Linux 2.2.x-3.x", true, false)));
}

#[test]
fn windows_syns_are_windows() {
    let win7 = Pkt {
        ttl: 128,
        window: 8192,
        opts: &WINDOWS_OPTS,
        ..LINUX
    };
    let sig = "4:128+0:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0";
    assert_eq!(observe(win7).to_string(), sig);
    assert_eq!(os(win7), Some(("Windows 7 or 8", false, false)));
    let class = REAL.classify(&observe(win7)).and_then(|m| m.class());
    assert_eq!(class, Some("win"));
    // Windows 10 and 11 open with 64240 too; p0f 3.09b only knows them generically.
    let win10 = Pkt {
        window: 64240,
        ..win7
    };
    assert_eq!(os(win10), Some(("Windows NT kernel", true, false)));
}

#[test]
fn ipv6_linux_syn_is_linux() {
    let mut opts = LINUX_OPTS;
    opts[0] = Opt::MaximumSegmentSize(1440);
    let v6 = Pkt {
        v6: true,
        window: 28800,
        opts: &opts,
        ..LINUX
    };
    let sig = "6:64+0:0:1440:mss*20,7:mss,sok,ts,nop,ws::0";
    assert_eq!(observe(v6).to_string(), sig);
    assert_eq!(os(v6), Some(("Linux 3.11 and newer", false, false)));
    // A flow label is a quirk no signature allows and fuzzy matching does not forgive.
    let labelled = Pkt {
        flow: 0x5_1c2e,
        ..v6
    };
    assert!(observe(labelled).quirks.contains(Quirk::Flow));
    assert_eq!(os(labelled), None);
}

#[test]
fn only_syns_without_ack_are_observed() {
    let synack = frame(Pkt { ack: true, ..LINUX });
    assert_eq!(syn(LinkType::Ethernet, &synack), None);
    let mut udp = Vec::new();
    let b = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).udp(1, 2);
    b.write(&mut udp, &[]).unwrap();
    assert_eq!(syn(LinkType::RawIp, &udp), None);
    let f = frame(LINUX);
    assert!(syn(LinkType::RawIp, &f[14..]).is_some());
    for len in 0..f.len() {
        assert_eq!(syn(LinkType::Ethernet, &f[..len]), None, "len {len}");
    }
}

#[test]
fn ttl_within_reach_is_exact_and_far_off_is_fuzzy() {
    let near = REAL.classify(&observe(Pkt { ttl: 60, ..LINUX }));
    let near = near.map(|m| (m.label(), m.fuzzy, m.distance));
    assert_eq!(near, Some(("Linux 3.11 and newer", false, 4)));
    // No 128 signature has Linux's layout, so p0f settles for a fuzzy Linux.
    let far = REAL.classify(&observe(Pkt { ttl: 128, ..LINUX }));
    let far = far.map(|m| (m.label(), m.fuzzy, m.distance));
    assert_eq!(far, Some(("Linux 3.11 and newer", true, 0)));
    let shown = observe(Pkt { ttl: 20, ..LINUX }).to_string();
    assert!(shown.starts_with("4:20+12:"), "{shown}");
}

#[test]
fn fuzzy_quirks_follow_p0f() {
    // A middlebox clearing DF: df and id+ vanish, which p0f forgives.
    let no_df = Pkt { df: false, ..LINUX };
    assert_eq!(os(no_df), Some(("Linux 3.11 and newer", false, true)));
    // A quirk p0f does not forgive (pushf+ here) leaves no match at all.
    let mut f = frame(LINUX);
    f[47] |= 0x08;
    assert_eq!(REAL.classify(&syn(LinkType::Ethernet, &f).unwrap()), None);
    // Userland tools never match fuzzily: an NMap probe, then with id- (may appear).
    let small = Database::parse(SMALL).unwrap();
    let opts = [Opt::MaximumSegmentSize(1460)];
    let nmap = Pkt {
        ttl: 40,
        df: false,
        window: 1024,
        opts: &opts,
        ..LINUX
    };
    let m = small
        .classify(&observe(nmap))
        .map(|m| (m.label(), m.class(), m.distance));
    assert_eq!(m, Some(("NMap SYN scan", None, 24)));
    assert_eq!(small.classify(&observe(Pkt { id: 0, ..nmap })), None);
    // In the real database the exact NMap label wins over a fuzzy generic Linux one.
    assert_eq!(os(nmap), Some(("NMap SYN scan", false, false)));
}

#[test]
fn options_are_read_like_p0f() {
    let with = |raw: &[u8]| {
        let mut out = Vec::new();
        let b = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).tcp(1, 2, 3, 4);
        b.syn()
            .options_raw(raw)
            .unwrap()
            .write(&mut out, b"x")
            .unwrap();
        let s = syn(LinkType::RawIp, &out).expect("a syn");
        (
            s.options().to_vec(),
            s.eol_pad(),
            s.mss,
            s.wscale,
            s.quirks.to_string(),
        )
    };
    let eol = with(&[2, 4, 5, 180, 3, 3, 15, 0, 0, 7, 0, 0]);
    assert_eq!(eol, (vec![2, 3, 0], 4, 1460, 15, "df,opt+,exws".into()));
    let short_mss = with(&[2, 3, 5, 180]);
    assert_eq!(short_mss, (vec![2], 0, 1460, 0, "df,bad".into()));
    let truncated_ts = with(&[1, 1, 8, 10]);
    assert_eq!(truncated_ts, (vec![1, 1, 8], 0, 0, 0, "df,bad".into()));
    let ts = with(&[1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 9]);
    assert_eq!(ts, (vec![1, 1, 8], 0, 0, 0, "df,ts1-,ts2+".into()));
}

#[test]
fn os_matches_compares_names_case_insensitively() {
    let m = REAL.classify(&observe(LINUX));
    assert!(os_matches(m.as_ref(), &["linux"]));
    assert!(os_matches(
        m.as_ref(),
        &["BSD".to_owned(), "LINUX".to_owned()]
    ));
    assert!(!os_matches(m.as_ref(), &["Windows"]));
    assert!(!os_matches(m.as_ref(), &["Linux 3.11 and newer"]));
    assert!(!os_matches::<&str>(m.as_ref(), &[]));
    assert!(!os_matches(None, &["Linux"]));
}

proptest! {
    #[test]
    fn parse_never_panics(text in ".{0,200}") {
        let _ = Database::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_sig_like_lines(sig in "[0-9*:,+%?a-z-]{0,60}") {
        let _ = Database::parse(&format!("classes = unix\n[tcp:request]\nlabel = s:unix:X:\nsig = {sig}"));
    }

    #[test]
    fn syn_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::RawIp] {
            if let Some(s) = syn(link, &bytes) {
                let _ = (REAL.classify(&s), s.to_string());
            }
        }
    }

    #[test]
    fn syn_never_panics_on_mutated_syns(pos in 0usize..74, val in any::<u8>()) {
        let mut f = frame(LINUX);
        if let Some(b) = f.get_mut(pos) { *b = val; }
        if let Some(s) = syn(LinkType::Ethernet, &f) {
            let _ = (REAL.classify(&s), s.to_string());
        }
    }

    /// What a SYN displays as is a signature that matches it exactly.
    #[test]
    fn displayed_syn_is_its_own_signature(
        ttl in 1u8..=255, df in any::<bool>(), id in any::<u16>(), window in any::<u16>(),
        mss in any::<u16>(), ws in any::<u8>(), ts in any::<u32>(), v6 in any::<bool>(),
    ) {
        prop_assume!(sig::guess_distance(ttl) <= MAX_DIST);
        let opts = [Opt::MaximumSegmentSize(mss), Opt::Timestamp(ts, 0), Opt::Noop, Opt::WindowScale(ws)];
        let s = observe(Pkt { v6, ttl, df, id, window, opts: &opts, ..LINUX });
        let db = Database::parse(&format!("classes = unix\n[tcp:request]\nlabel = s:unix:Echo:\nsig = {s}"));
        let db = db.map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        let m = db.classify(&s);
        prop_assert_eq!(m.map(|m| (m.label(), m.fuzzy)), Some(("Echo", false)), "{}", s);
    }
}
