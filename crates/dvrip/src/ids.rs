//! Every message id of both seed tables (`000_…` C1–C27 and `001_…`), as
//! named constants, with the seed's own names.
//!
//! Seed 000 lists `LOGIN_REQ` as "999/1000"; every device and client uses
//! 1000, so [`LOGIN_REQ`] is 1000 and [`LOGIN_REQ_ALT`] keeps 999 visible.

macro_rules! ids {
    ($($(#[$m:meta])* $name:ident = $v:literal,)*) => {
        $($(#[$m])* pub const $name: u16 = $v;)*
        /// The seed name of a message id, if it is one of the tables.
        pub fn name(id: u16) -> Option<&'static str> {
            match id {
                $($v => Some(stringify!($name)),)*
                _ => None,
            }
        }
        /// Every named id, in table order (for tests and `ivr dvrip ids`).
        pub const ALL: &[(u16, &str)] = &[$(($v, stringify!($name)),)*];
    };
}

ids! {
    /// Seed 000 writes "999/1000"; kept for completeness, never sent.
    LOGIN_REQ_ALT = 999,
    /// C1 login request (`EncryptType`, `LoginType`, `PassWord`, `UserName`).
    LOGIN_REQ = 1000,
    LOGIN_RESP = 1001,
    LOGOUT_REQ = 1002,
    LOGOUT_RESP = 1003,
    FORCELOGOUT_REQ = 1004,
    FORCELOGOUT_RESP = 1005,
    KEEPALIVE_REQ = 1006,
    KEEPALIVE_RESP = 1007,
    /// Seed 001: `SystemInfo`, `StorageInfo`, `WorkState`, `OEMInfo`.
    SYSTEM_INFO_REQ = 1020,
    SYSTEM_INFO_RESP = 1021,
    CONFIG_SET = 1040,
    CONFIG_SET_RSP = 1041,
    CONFIG_GET = 1042,
    CONFIG_GET_RESP = 1043,
    DEFAULT_CONFIG_GET = 1044,
    DEFAULT_CONFIG_GET_RSP = 1045,
    CONFIG_CHANNELTILE_SET = 1046,
    CONFIG_CHANNELTILE_SET_RSP = 1047,
    CHANNELTITLE_REQ = 1048,
    CHANNELTITLE_RESP = 1049,
    CONFIG_CHANNELTILE_DOT_SET = 1050,
    CONFIG_CHANNELTILE_DOT_SET_RSP = 1051,
    SYSTEM_DEBUG_REQ = 1052,
    SYSTEM_DEBUG_RESP = 1053,
    /// Seed 001: `SystemFunction` and `EncodeCapability`.
    SYSTEMFUNCTION_REQ = 1360,
    SYSTEMFUNCTION_RESP = 1361,
    PTZ_REQ = 1400,
    PTZ_RESP = 1401,
    OPMONITOR_REQ = 1410,
    OPMONITOR_RESP = 1411,
    OPMONITOR_DATA = 1412,
    OPMONITOR_CLAIM_REQ = 1413,
    OPMONITOR_CLAIM_RESP = 1414,
    PLAY_REQ = 1420,
    PLAY_RSP = 1421,
    PLAY_DATA = 1422,
    PLAY_EOF = 1423,
    PLAY_CLAIM = 1424,
    PLAY_CLAIM_RSP = 1425,
    DOWNLOAD_DATA = 1426,
    TALK_REQ = 1430,
    TALK_RESP = 1431,
    TALK_CU_PU_DATA = 1432,
    TALK_PU_CU_DATA = 1433,
    TALK_CLAIM = 1434,
    TALK_CLAIM_RSP = 1435,
    FILESEARCH_REQ = 1440,
    FILESEARCH_RSP = 1441,
    LOGSEARCH_REQ = 1442,
    LOGSEARCH_RSP = 1443,
    FILESEARCH_BYTIME_REQ = 1444,
    FILESEARCH_BYTIME_RESP = 1445,
    /// C18 system management: `OPMachine`, `OPTimeSetting`, `OPLogManager`, `OPDefaultConfig`.
    SYSMANAGER_REQ = 1450,
    SYSMANAGER_RSP = 1451,
    OPTIMEQUERY_REQ = 1452,
    OPTIMEQUERY_RESP = 1453,
    /// C19 disk management (`OPStorageManager`).
    DISKMANAGER_REQ = 1460,
    DISKMANAGER_RSP = 1461,
    FULLAUTHORITYLIST_GET = 1470,
    FULLAUTHORITYLIST_GET_RESP = 1471,
    USERS_GET = 1472,
    USERS_GET_RESP = 1473,
    GROUPS_GET = 1474,
    GROUPS_GET_RESP = 1475,
    ADDGROUP_REQ = 1476,
    ADDGROUP_RSP = 1477,
    MODIFYGROUP_REQ = 1478,
    MODIFYGROUP_RSP = 1479,
    DELETEGROUP_REQ = 1480,
    DELETEGROUP_RSP = 1481,
    ADDUSER_REQ = 1482,
    ADDUSER_RSP = 1483,
    MODIFYUSER_REQ = 1484,
    MODIFYUSER_RSP = 1485,
    OPDELUSER_REQ = 1486,
    OPDELUSER_RESP = 1487,
    MODIFYPASSWORD_REQ = 1488,
    MODIFYPASSWORD_RSP = 1489,
    /// Seed 000 `GUARD_REQ`, seed 001 `EMPTY_REQ`: subscribe to alarms.
    GUARD_REQ = 1500,
    GUARD_RSP = 1501,
    UNGUARD_REQ = 1502,
    /// Seed 000 names this one `UNGUARD_REQ` too (a typo for the response).
    UNGUARD_RSP = 1503,
    /// The only message a device sends unasked on a session (`AlarmInfo`).
    ALARM_REQ = 1504,
    ALARM_RSP = 1505,
    NET_ALARM_REQ = 1506,
    NET_ALARM_RSP = 1507,
    /// Pushed to the alarm center (TCP 15002), not on a session.
    ALARMCENTER_MSG_REQ = 1508,
    UPGRADE_REQ = 1520,
    UPGRADE_RSP = 1521,
    UPGRADE_DATA = 1522,
    UPGRADE_DATA_RSP = 1523,
    UPGRADE_PROGRESS = 1524,
    UPGRADE_INFO_REQ = 1525,
    UPGRADE_INFO_RSP = 1526,
    IPSEARCH_REQ = 1530,
    IPSEARCH_RSP = 1531,
    IP_SET_REQ = 1532,
    IP_SET_RSP = 1533,
    CONFIG_IMPORT_REQ = 1540,
    CONFIG_IMPORT_RSP = 1541,
    CONFIG_EXPORT_REQ = 1542,
    CONFIG_EXPORT_RSP = 1543,
    LOG_EXPORT_REQ = 1544,
    LOG_EXPORT_RSP = 1545,
    NET_KEYBOARD_REQ = 1550,
    NET_KEYBOARD_RSP = 1551,
    NET_SNAP_REQ = 1560,
    NET_SNAP_RSP = 1561,
    SET_IFRAME_REQ = 1562,
    SET_IFRAME_RSP = 1563,
    RS232_READ_REQ = 1570,
    RS232_READ_RSP = 1571,
    RS232_WRITE_REQ = 1572,
    RS232_WRITE_RSP = 1573,
    RS485_READ_REQ = 1574,
    RS485_READ_RSP = 1575,
    RS485_WRITE_REQ = 1576,
    RS485_WRITE_RSP = 1577,
    TRANSPARENT_COMM_REQ = 1578,
    TRANSPARENT_COMM_RSP = 1579,
    RS485_TRANSPARENT_DATA_REQ = 1580,
    RS485_TRANSPARENT_DATA_RSP = 1581,
    RS232_TRANSPARENT_DATA_REQ = 1582,
    RS232_TRANSPARENT_DATA_RSP = 1583,
    /// Seed 001: time setting on devices without a real-time clock.
    OPTIMESETTING_NORTC_REQ = 1590,
    OPTIMESETTING_NORTC_RESP = 1591,
    PHOTO_GET_REQ = 1600,
    PHOTO_GET_RSP = 1601,
}

/// Messages whose bytes 12/13 mean channel and end flag and whose payload is
/// binary: they are never reassembled as JSON fragments.
pub fn is_stream(id: u16) -> bool {
    matches!(
        id,
        OPMONITOR_DATA
            | PLAY_DATA
            | DOWNLOAD_DATA
            | TALK_CU_PU_DATA
            | TALK_PU_CU_DATA
            | UPGRADE_DATA
            | NET_SNAP_RSP
            | CONFIG_EXPORT_RSP
            | LOG_EXPORT_RSP
            | CONFIG_CHANNELTILE_DOT_SET
            | RS232_TRANSPARENT_DATA_REQ
            | RS485_TRANSPARENT_DATA_REQ
    )
}

/// The reply id of a request id: requests are even, replies are `id + 1`.
pub fn reply_of(request: u16) -> u16 {
    request.wrapping_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_ids_are_unique() {
        assert_eq!(name(1000), Some("LOGIN_REQ"));
        assert_eq!(name(1590), Some("OPTIMESETTING_NORTC_REQ"));
        assert_eq!(name(4242), None);
        let mut seen = std::collections::HashSet::new();
        for (id, _) in ALL {
            assert!(seen.insert(*id), "duplicate id {id}");
        }
        // Seed 001's table (beyond what 000 has) is all present.
        for id in [1020, 1021, 1360, 1361, 1410, 1411, 1412, 1413, 1414, 1452, 1453, 1590, 1591] {
            assert!(name(id).is_some(), "seed 001 id {id} missing");
        }
        // Seed 000's first and last of each group.
        for id in [
            1000, 1007, 1040, 1053, 1400, 1401, 1420, 1426, 1430, 1435, 1440, 1445, 1470, 1489, 1500, 1508, 1520, 1526,
            1530, 1533, 1540, 1545, 1550, 1551, 1560, 1563, 1570, 1583, 1600, 1601,
        ] {
            assert!(name(id).is_some(), "seed 000 id {id} missing");
        }
    }
}
