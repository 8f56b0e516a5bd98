//! Return codes (`"Ret"`) of both seed tables with their meanings.
//!
//! Seed 000 and seed 001 disagree on 203 (password incorrect / incorrect
//! password: the same) and 205 (user locked / incorrect username). A user
//! reads the meaning real devices give (seed 000's, which python-dvr and the
//! vendor's client show); [`seed_note`] keeps the disagreement for those who
//! need it.

/// The meaning of a `Ret` code, or `None` if neither table lists it.
pub fn meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        100 => "OK",
        101 => "unknown error",
        102 => "version not supported",
        103 => "illegal request",
        104 => "this user is already logged in",
        105 => "this user is not logged in",
        106 => "incorrect username or password",
        107 => "no permission",
        108 => "time out",
        109 => "search failed: file not found",
        110 => "search successful: all files returned",
        111 => "search successful: some files returned",
        112 => "user already exists",
        113 => "user does not exist",
        114 => "user group already exists",
        115 => "user group does not exist",
        116 => "no description provided",
        117 => "message format error",
        118 => "PTZ protocol not set",
        119 => "no files found",
        120 => "configured to enable",
        121 => "digital channel is not connected (MEDIA_CHN_NOTCONNECT)",
        136 => "not supported",
        150 => "success, the device needs to be restarted",
        202 => "user is not logged in",
        203 => "password is incorrect",
        204 => "illegal user",
        205 => "user is locked",
        206 => "user is in blacklist",
        207 => "username has already logged in",
        208 => "input is illegal",
        209 => "index duplication (e.g. the user to be added already exists)",
        210 => "object does not exist (query)",
        211 => "object does not exist",
        212 => "account is in use",
        213 => "subset exceeds the scope (permissions beyond the group's or the table's)",
        214 => "password is invalid",
        215 => "password does not match",
        216 => "keep account (reserved)",
        502 => "the command is illegal",
        503 => "intercom is on",
        504 => "intercom is not enabled",
        511 => "upgrade has started",
        512 => "upgrade not started",
        513 => "upgrade data error",
        514 => "upgrade failed",
        515 => "upgrade successful",
        521 => "restore default failed",
        522 => "need to restart the device",
        523 => "the default configuration is illegal",
        602 => "need to restart the application",
        603 => "need to restart the system",
        604 => "error writing file",
        605 => "feature not supported",
        606 => "authentication failed",
        607 => "configuration does not exist",
        608 => "configuration parsing error",
        _ => return None,
    })
}

/// Whether a code means the request was carried out. Besides 100 this is
/// the search codes (110, 111 and 119 "no files"), 150 and 522/602/603
/// (done, restart needed), 503 (intercom on) and the upgrade successes (511
/// started, 515 success — the vendor PDF's reading; one public client has
/// 514/515 inverted).
pub fn is_success(code: i64) -> bool {
    matches!(code, 100 | 110 | 111 | 119 | 150 | 503 | 511 | 515 | 522 | 602 | 603)
}

/// Named codes used in logic (never a bare number).
pub mod code {
    pub const OK: i64 = 100;
    pub const UNKNOWN_ERROR: i64 = 101;
    pub const ILLEGAL_REQUEST: i64 = 103;
    pub const ALREADY_LOGGED_IN: i64 = 104;
    pub const NOT_LOGGED_IN: i64 = 105;
    pub const BAD_CREDENTIALS: i64 = 106;
    pub const NO_PERMISSION: i64 = 107;
    pub const TIMEOUT: i64 = 108;
    pub const FILE_NOT_FOUND: i64 = 109;
    pub const SEARCH_ALL: i64 = 110;
    pub const SEARCH_PARTIAL: i64 = 111;
    pub const USER_EXISTS: i64 = 112;
    pub const USER_MISSING: i64 = 113;
    pub const GROUP_EXISTS: i64 = 114;
    pub const GROUP_MISSING: i64 = 115;
    pub const MESSAGE_FORMAT: i64 = 117;
    pub const PTZ_NOT_SET: i64 = 118;
    pub const NO_FILES: i64 = 119;
    pub const NOT_SUPPORTED: i64 = 136;
    pub const NEEDS_RESTART: i64 = 150;
    pub const PASSWORD_INCORRECT: i64 = 203;
    pub const ILLEGAL_USER: i64 = 204;
    pub const USER_LOCKED: i64 = 205;
    pub const ILLEGAL_INPUT: i64 = 208;
    pub const ACCOUNT_IN_USE: i64 = 212;
    pub const SUBSET_EXCEEDED: i64 = 213;
    pub const PASSWORD_INVALID: i64 = 214;
    pub const PASSWORD_MISMATCH: i64 = 215;
    pub const RESERVED_ACCOUNT: i64 = 216;
    pub const ILLEGAL_COMMAND: i64 = 502;
    pub const INTERCOM_ON: i64 = 503;
    pub const INTERCOM_OFF: i64 = 504;
    pub const UPGRADE_STARTED: i64 = 511;
    pub const UPGRADE_NOT_STARTED: i64 = 512;
    pub const UPGRADE_DATA_ERROR: i64 = 513;
    pub const UPGRADE_FAILED: i64 = 514;
    pub const UPGRADE_OK: i64 = 515;
    pub const NEED_REBOOT: i64 = 522;
    pub const RESTART_APP: i64 = 602;
    pub const FEATURE_UNSUPPORTED: i64 = 605;
    pub const AUTH_FAILED: i64 = 606;
    pub const CONFIG_MISSING: i64 = 607;
    pub const CONFIG_PARSE: i64 = 608;
}

/// Where the two code tables disagree on a code, or list it in only one.
pub fn seed_note(code: i64) -> Option<&'static str> {
    match code {
        136 => Some("only seed 001 lists it"),
        203 => Some("seed 000: password is incorrect; seed 001: incorrect password"),
        205 => Some("seed 000: user is locked; seed 001: incorrect username"),
        _ => None,
    }
}

/// `"Ret 203: password is incorrect"`, for error messages.
pub fn describe(code: i64) -> String {
    match meaning(code) {
        Some(m) => format!("Ret {code}: {m}"),
        None => format!("Ret {code}: not in the DVRIP code tables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_plain_meanings_and_the_seeds_disagreement_is_kept() {
        assert_eq!(describe(203), "Ret 203: password is incorrect");
        assert_eq!(describe(205), "Ret 205: user is locked");
        assert!(seed_note(205).unwrap().contains("incorrect username"));
        assert!(seed_note(100).is_none());
    }

    #[test]
    fn upgrade_codes_follow_the_vendor_pdf() {
        assert!(is_success(code::UPGRADE_OK));
        assert!(!is_success(code::UPGRADE_FAILED));
        assert_eq!(describe(136), "Ret 136: not supported");
        assert_eq!(describe(999), "Ret 999: not in the DVRIP code tables");
    }
}
