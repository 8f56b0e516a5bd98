//! The master server's state: users, groups and privileges, logins with
//! AppGUIDs, entities and their groups and services, profiles,
//! applications, mounts.

use cvip::api::{md5_hex, EntityType, Privilege};
use cvip::server::{ack_ok, Refusal, Reply};
use cvip::{canon, Struct, Value};
use std::collections::BTreeMap;

/// Largest ImageData in one packet (the seed: "not greater than 1024 Kbytes").
pub const IMAGE_CHUNK_MAX: usize = 1024 * 1024;
pub const PAGE: usize = 20;
const ALL_PRIVILEGES: u32 = 0x7f;

#[derive(Clone, Debug)]
struct User {
    id: u32,
    name: String,
    /// MD5 (lower-case hex) of the password as the client sends it.
    password_md5: String,
    description: String,
    priority: u32,
    privilege: u32,
    group: u32,
    mounts: Vec<(u32, u32)>,
}

#[derive(Clone, Debug)]
struct Group {
    id: u32,
    name: String,
    description: String,
    privilege: u32,
}

#[derive(Clone, Debug)]
struct Entity {
    ty: u32,
    id: u32,
    group: u32,
    name: String,
    description: String,
    props: Struct,
    /// ServiceID → profile id (device entities).
    services: BTreeMap<String, u32>,
}

#[derive(Default)]
pub struct Master {
    users: Vec<User>,
    groups: Vec<Group>,
    sessions: BTreeMap<String, u32>,
    entities: Vec<Entity>,
    entity_groups: Vec<(u32, u32, String, String)>,
    profiles: Vec<(u32, u32, Struct)>,
    applications: Vec<(u32, u32, u32, Struct)>,
    /// entity type → (version, last change)
    versions: BTreeMap<u32, (u32, String)>,
    next_id: u32,
    login_count: u64,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn fail(m: impl Into<String>) -> Refusal {
    Refusal::fail(m)
}

fn need_str(s: &Struct, k: &str, method: &str) -> Result<String, Refusal> {
    s.str(k).filter(|v| !v.is_empty()).ok_or_else(|| Refusal::invalid(format!("{method}: missing {k}")))
}

fn need_int(s: &Struct, k: &str, method: &str) -> Result<u32, Refusal> {
    s.int(k)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| Refusal::invalid(format!("{method}: missing or non-numeric {k}")))
}

fn list(items: Vec<Value>) -> Value {
    Value::Array(items)
}

impl Master {
    pub fn new(admin_user: &str, admin_password: &str) -> Master {
        let mut m = Master { next_id: 1, ..Master::default() };
        let g = m.id();
        m.groups.push(Group {
            id: g,
            name: "Administrators".into(),
            description: "every privilege".into(),
            privilege: ALL_PRIVILEGES,
        });
        let u = m.id();
        m.users.push(User {
            id: u,
            name: admin_user.into(),
            password_md5: md5_hex(admin_password),
            description: "built-in administrator".into(),
            priority: 1,
            privilege: ALL_PRIVILEGES,
            group: g,
            mounts: vec![],
        });
        m
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn bump(&mut self, ty: u32) {
        let e = self.versions.entry(ty).or_insert((0, now()));
        e.0 += 1;
        e.1 = now();
    }

    pub fn logins(&self) -> u64 {
        self.login_count
    }

    /// Master-server methods; None when `method` is not one.
    pub fn handle(&mut self, method: &str, s: &Struct) -> Option<Reply> {
        let m = method.to_ascii_lowercase();
        let (svc, op) = m.split_once('.')?;
        if !matches!(svc, "cviuser" | "cvientity" | "cviprofile" | "cviapplication") {
            return None;
        }
        if m == "cviuser.login" {
            return Some(self.login(s));
        }
        // Every other call carries a valid AppGUID.
        let app = s.str("AppGUID").unwrap_or_default();
        let Some(&uid) = self.sessions.get(&app) else {
            return Some(Err(fail(format!(
                "{method}: {} — log in with cviUser.login first",
                if app.is_empty() { "no AppGUID".to_string() } else { format!("AppGUID {app} is not logged in") }
            ))));
        };
        let Some(user) = self.users.iter().find(|u| u.id == uid).cloned() else {
            self.sessions.remove(&app);
            return Some(Err(fail(format!("{method}: the session's user was deleted"))));
        };
        let housekeeping = user.privilege & Privilege::Housekeeping.code() != 0;
        let writes = !matches!(op, "listgroups" | "listusers" | "query" | "list" | "listservices" | "logout");
        if writes && !housekeeping {
            return Some(Err(fail(format!("{method}: user {} lacks the Housekeeping privilege", user.name))));
        }
        Some(match (svc, op) {
            ("cviuser", "logout") => {
                self.sessions.remove(&app);
                Ok(ack_ok())
            }
            ("cviuser", _) => self.users_call(op, method, s),
            ("cvientity", _) => self.entity_call(op, method, s),
            ("cviprofile", _) => self.profile_call(op, method, s),
            (_, _) => self.application_call(op, method, s),
        })
    }

    fn login(&mut self, s: &Struct) -> Reply {
        let name = s.str("UserName").unwrap_or_default().to_ascii_lowercase();
        let pass = s.str("PassWord").unwrap_or_default().to_ascii_lowercase();
        let is_md5 = |v: &str| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_md5(&name) || !is_md5(&pass) {
            return Err(Refusal::invalid("cviUser.login: UserName and PassWord must be lowercase hex MD5 (32 digits)"));
        }
        let Some(u) = self.users.iter().find(|u| md5_hex(&u.name) == name) else {
            return Err(fail("cviUser.login: unknown user or wrong password"));
        };
        if u.password_md5 != pass {
            return Err(fail("cviUser.login: unknown user or wrong password"));
        }
        self.login_count += 1;
        let app = new_guid(self.login_count);
        self.sessions.insert(app.clone(), u.id);
        let mut r = ack_ok();
        if let Value::Struct(st) = &mut r {
            st.push("AppGUID", app.as_str());
            st.push("UserID", u.id);
            st.push("UserPrivilege", u.privilege);
        }
        Ok(r)
    }

    fn users_call(&mut self, op: &str, method: &str, s: &Struct) -> Reply {
        match op {
            "listgroups" => Ok(list(
                self.groups
                    .iter()
                    .map(|g| {
                        Struct::new()
                            .with("GroupID", g.id)
                            .with("GroupName", g.name.as_str())
                            .with("GroupDescription", g.description.as_str())
                            .with("GroupPrivilege", g.privilege)
                            .into()
                    })
                    .collect(),
            )),
            "addgroup" => {
                let name = need_str(s, "GroupName", method)?;
                if self.groups.iter().any(|g| g.name.eq_ignore_ascii_case(&name)) {
                    return Err(fail(format!("{method}: group {name:?} exists")));
                }
                let id = self.id();
                self.groups.push(Group {
                    id,
                    name,
                    description: s.str("GroupDescription").unwrap_or_default(),
                    privilege: s.int("GroupPrivilege").unwrap_or(0) as u32 & ALL_PRIVILEGES,
                });
                Ok(with_id(ack_ok(), "GroupID", id))
            }
            "updategroup" => {
                let id = need_int(s, "GroupID", method)?;
                let g = self
                    .groups
                    .iter_mut()
                    .find(|g| g.id == id)
                    .ok_or_else(|| fail(format!("{method}: no group {id}")))?;
                if let Some(n) = s.str("GroupName") {
                    g.name = n;
                }
                if let Some(d) = s.str("GroupDescription") {
                    g.description = d;
                }
                if let Some(p) = s.int("GroupPrivilege") {
                    g.privilege = p as u32 & ALL_PRIVILEGES;
                }
                Ok(ack_ok())
            }
            "deletegroup" => {
                let id = need_int(s, "GroupID", method)?;
                if !self.groups.iter().any(|g| g.id == id) {
                    return Err(fail(format!("{method}: no group {id}")));
                }
                if self.users.iter().any(|u| u.group == id) {
                    return Err(fail(format!("{method}: group {id} still has users")));
                }
                self.groups.retain(|g| g.id != id);
                Ok(ack_ok())
            }
            "listusers" => Ok(list(
                self.users
                    .iter()
                    .map(|u| {
                        Struct::new()
                            .with("UserID", u.id)
                            .with("UserName", u.name.as_str())
                            .with("UserDescription", u.description.as_str())
                            .with("UserPriority", u.priority)
                            .with("UserPrivilege", u.privilege)
                            .with("GroupID", u.group)
                            .with(
                                "Mounts",
                                Value::Array(
                                    u.mounts
                                        .iter()
                                        .map(|(e, t)| Struct::new().with("EntityID", *e).with("EntityType", *t).into())
                                        .collect(),
                                ),
                            )
                            .into()
                    })
                    .collect(),
            )),
            "adduser" => {
                let name = need_str(s, "UserName", method)?;
                if self.users.iter().any(|u| u.name.eq_ignore_ascii_case(&name)) {
                    return Err(fail(format!("{method}: user {name:?} exists")));
                }
                let group = s.int("GroupID").unwrap_or(0) as u32;
                if group != 0 && !self.groups.iter().any(|g| g.id == group) {
                    return Err(fail(format!("{method}: no group {group}")));
                }
                let pass = s.str("UserPassword").unwrap_or_else(|| md5_hex(""));
                let id = self.id();
                self.users.push(User {
                    id,
                    name,
                    password_md5: pass.to_ascii_lowercase(),
                    description: s.str("UserDescription").unwrap_or_default(),
                    priority: s.int("UserPriority").unwrap_or(5) as u32,
                    privilege: s.int("UserPrivilege").unwrap_or(Privilege::Streaming.code() as i64) as u32
                        & ALL_PRIVILEGES,
                    group,
                    mounts: vec![],
                });
                Ok(with_id(ack_ok(), "UserID", id))
            }
            "updateuser" => {
                let id = need_int(s, "UserID", method)?;
                if let Some(g) = s.int("GroupID").map(|g| g as u32) {
                    if g != 0 && !self.groups.iter().any(|x| x.id == g) {
                        return Err(fail(format!("{method}: no group {g}")));
                    }
                }
                let u = self
                    .users
                    .iter_mut()
                    .find(|u| u.id == id)
                    .ok_or_else(|| fail(format!("{method}: no user {id}")))?;
                if let Some(v) = s.str("UserName").filter(|v| !v.is_empty()) {
                    u.name = v;
                }
                if let Some(v) = s.str("UserPassword").filter(|v| !v.is_empty()) {
                    u.password_md5 = v.to_ascii_lowercase();
                }
                if let Some(v) = s.str("UserDescription") {
                    u.description = v;
                }
                if let Some(v) = s.int("UserPriority") {
                    u.priority = v as u32;
                }
                if let Some(v) = s.int("UserPrivilege") {
                    u.privilege = v as u32 & ALL_PRIVILEGES;
                }
                if let Some(v) = s.int("GroupID") {
                    u.group = v as u32;
                }
                Ok(ack_ok())
            }
            "deleteuser" => {
                let id = need_int(s, "UserID", method)?;
                if !self.users.iter().any(|u| u.id == id) {
                    return Err(fail(format!("{method}: no user {id}")));
                }
                if self.users.iter().filter(|u| u.privilege & Privilege::Housekeeping.code() != 0).count() == 1
                    && self.users.iter().any(|u| u.id == id && u.privilege & Privilege::Housekeeping.code() != 0)
                {
                    return Err(fail(format!("{method}: user {id} is the last one with Housekeeping")));
                }
                self.users.retain(|u| u.id != id);
                self.sessions.retain(|_, u| *u != id);
                Ok(ack_ok())
            }
            "mount" | "unmount" => {
                let uid = need_int(s, "UserID", method)?;
                let eid = need_int(s, "EntityID", method)?;
                let ty = s.int("EntityType").or_else(|| s.int("EntityTypeID")).unwrap_or(0) as u32;
                if ty != EntityType::Camera.code() && ty != EntityType::Monitor.code() {
                    return Err(fail(format!(
                        "{method}: only camera (1) and monitor (2) entities mount, not type {ty}"
                    )));
                }
                if !self.entities.iter().any(|e| e.id == eid && e.ty == ty) {
                    return Err(fail(format!("{method}: no entity {eid} of type {ty}")));
                }
                let u = self
                    .users
                    .iter_mut()
                    .find(|u| u.id == uid)
                    .ok_or_else(|| fail(format!("{method}: no user {uid}")))?;
                let has = u.mounts.contains(&(eid, ty));
                if op == "mount" {
                    if has {
                        return Err(fail(format!("{method}: entity {eid} is already mounted on user {uid}")));
                    }
                    u.mounts.push((eid, ty));
                } else {
                    if !has {
                        return Err(fail(format!("{method}: entity {eid} is not mounted on user {uid}")));
                    }
                    u.mounts.retain(|m| *m != (eid, ty));
                }
                Ok(ack_ok())
            }
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }

    fn entity_call(&mut self, op: &str, method: &str, s: &Struct) -> Reply {
        match op {
            "listgroups" => {
                let ty = need_int(s, "EntityTypeID", method)?;
                Ok(list(
                    self.entity_groups
                        .iter()
                        .filter(|g| g.0 == ty)
                        .map(|g| {
                            Struct::new()
                                .with("EntityTypeID", g.0)
                                .with("GroupID", g.1)
                                .with("GroupName", g.2.as_str())
                                .with("GroupDesc", g.3.as_str())
                                .into()
                        })
                        .collect(),
                ))
            }
            "addgroup" => {
                let ty = need_int(s, "EntityTypeID", method)?;
                let name = need_str(s, "GroupName", method)?;
                if self.entity_groups.iter().any(|g| g.0 == ty && g.2.eq_ignore_ascii_case(&name)) {
                    return Err(fail(format!("{method}: group {name:?} exists for type {ty}")));
                }
                let id = self.id();
                self.entity_groups.push((ty, id, name, s.str("GroupDescription").unwrap_or_default()));
                self.bump(ty);
                Ok(with_id(ack_ok(), "GroupID", id))
            }
            "updategroup" => {
                let id = need_int(s, "GroupID", method)?;
                let g = self
                    .entity_groups
                    .iter_mut()
                    .find(|g| g.1 == id)
                    .ok_or_else(|| fail(format!("{method}: no group {id}")))?;
                if let Some(n) = s.str("GroupName") {
                    g.2 = n;
                }
                if let Some(d) = s.str("GroupDescription") {
                    g.3 = d;
                }
                let ty = g.0;
                self.bump(ty);
                Ok(ack_ok())
            }
            "deletegroup" => {
                let id = need_int(s, "GroupID", method)?;
                let Some(ty) = self.entity_groups.iter().find(|g| g.1 == id).map(|g| g.0) else {
                    return Err(fail(format!("{method}: no group {id}")));
                };
                if self.entities.iter().any(|e| e.group == id) {
                    return Err(fail(format!("{method}: group {id} still has entities")));
                }
                self.entity_groups.retain(|g| g.1 != id);
                self.bump(ty);
                Ok(ack_ok())
            }
            "query" => {
                let ty = need_int(s, "EntityTypeID", method)?;
                let (v, t) = self.versions.get(&ty).cloned().unwrap_or((0, String::new()));
                Ok(Struct::new().with("EntityTypeID", ty).with("Version", v).with("TimeStamp", t).into())
            }
            "list" => {
                let ty = need_int(s, "EntityTypeID", method)?;
                let page = s.int("Page").unwrap_or(0).max(0) as usize;
                let all: Vec<&Entity> = self.entities.iter().filter(|e| e.ty == ty).collect();
                let items: Vec<Value> =
                    all.iter().skip(page.saturating_mul(PAGE)).take(PAGE).map(|e| entity_struct(e).into()).collect();
                Ok(Struct::new()
                    .with("IsLastPage", page.saturating_add(1).saturating_mul(PAGE) >= all.len())
                    .with("EntityTypeID", ty)
                    .with("Page", page as u32)
                    .with("Items", Value::Array(items))
                    .into())
            }
            "add" => {
                let ty = need_int(s, "EntityTypeID", method)?;
                let group = s.int("GroupID").unwrap_or(0) as u32;
                if group != 0 && !self.entity_groups.iter().any(|g| g.1 == group && g.0 == ty) {
                    return Err(fail(format!("{method}: no group {group} for entity type {ty}")));
                }
                let props = cvip::api::rest(s, cvip::api::ENTITY_FIXED);
                check_entity_props(ty, &props, method)?;
                // An image larger than one packet: IsLastPage=0 with an
                // EntityID appends to that image.
                if ty == EntityType::Image.code() {
                    if let Some(eid) = s.int("EntityID").filter(|i| *i > 0) {
                        let e = self
                            .entities
                            .iter_mut()
                            .find(|e| e.id == eid as u32 && e.ty == ty)
                            .ok_or_else(|| fail(format!("{method}: no image {eid} to append to")))?;
                        if let (Some(Value::Base64(old)), Some(Value::Base64(more))) =
                            (e.props.get_mut("ImageData"), props.get("ImageData"))
                        {
                            old.extend_from_slice(more);
                            let n = old.len() as u32;
                            e.props.set("ImageSize", n);
                        }
                        let id = e.id;
                        self.bump(ty);
                        return Ok(with_id(ack_ok(), "EntityID", id));
                    }
                }
                let id = self.id();
                self.entities.push(Entity {
                    ty,
                    id,
                    group,
                    name: s.str("EntityName").unwrap_or_default(),
                    description: s.str("EntityDesc").unwrap_or_default(),
                    props,
                    services: BTreeMap::new(),
                });
                self.bump(ty);
                Ok(with_id(ack_ok(), "EntityID", id))
            }
            "update" => {
                let id = need_int(s, "EntityID", method)?;
                let props = cvip::api::rest(s, cvip::api::ENTITY_FIXED);
                let e = self
                    .entities
                    .iter()
                    .find(|e| e.id == id)
                    .ok_or_else(|| fail(format!("{method}: no entity {id}")))?;
                check_entity_props(e.ty, &props, method)?;
                let e = self.entities.iter_mut().find(|e| e.id == id).unwrap();
                if let Some(n) = s.str("EntityName") {
                    e.name = n;
                }
                if let Some(d) = s.str("EntityDesc") {
                    e.description = d;
                }
                if let Some(g) = s.int("GroupID") {
                    e.group = g as u32;
                }
                for (k, v) in props.0 {
                    e.props.set(&k, v);
                }
                let ty = e.ty;
                self.bump(ty);
                Ok(ack_ok())
            }
            "delete" => {
                let id = need_int(s, "EntityID", method)?;
                let Some(ty) = self.entities.iter().find(|e| e.id == id).map(|e| e.ty) else {
                    return Err(fail(format!("{method}: no entity {id}")));
                };
                self.entities.retain(|e| e.id != id);
                for u in &mut self.users {
                    u.mounts.retain(|m| m.0 != id);
                }
                self.applications.retain(|a| a.1 != id);
                self.bump(ty);
                Ok(ack_ok())
            }
            "listservices" => {
                let id = need_int(s, "EntityID", method)?;
                let e = self
                    .entities
                    .iter()
                    .find(|e| e.id == id)
                    .ok_or_else(|| fail(format!("{method}: no entity {id}")))?;
                Ok(list(
                    e.services
                        .iter()
                        .map(|(sid, p)| {
                            Struct::new()
                                .with("EntityID", id)
                                .with("ServiceID", sid.as_str())
                                .with("ProfileID", *p)
                                .into()
                        })
                        .collect(),
                ))
            }
            "updateservices" => {
                let id = need_int(s, "EntityID", method)?;
                let sid = need_str(s, "ServiceID", method)?;
                let major = sid.split('.').next().and_then(cvip::parse_int_text).unwrap_or(0) as u32;
                if !(1..=4).contains(&major) {
                    return Err(fail(format!("{method}: ServiceID {sid:?} is not 0x01–0x04.[n]")));
                }
                let profile = s.int("ProfileID").or_else(|| s.int("ServiceProfile")).unwrap_or(0) as u32;
                if profile != 0 && !self.profiles.iter().any(|p| p.1 == profile) {
                    return Err(fail(format!("{method}: no profile {profile}")));
                }
                let e = self
                    .entities
                    .iter_mut()
                    .find(|e| e.id == id)
                    .ok_or_else(|| fail(format!("{method}: no entity {id}")))?;
                if e.ty != EntityType::Device.code() {
                    return Err(fail(format!("{method}: entity {id} is not a device")));
                }
                e.services.insert(sid, profile);
                Ok(ack_ok())
            }
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }

    fn profile_call(&mut self, op: &str, method: &str, s: &Struct) -> Reply {
        let fixed = ["GUID", "AppGUID", "ProfileTypeID", "ProfileType", "ProfileID"];
        let ty = s.int("ProfileTypeID").or_else(|| s.int("ProfileType")).map(|v| v as u32);
        match op {
            "list" => Ok(list(
                self.profiles
                    .iter()
                    .filter(|p| ty.is_none_or(|t| t == p.0))
                    .map(|(t, id, props)| {
                        let mut st = Struct::new().with("ProfileTypeID", *t).with("ProfileID", *id);
                        st.0.extend(props.0.iter().cloned());
                        st.into()
                    })
                    .collect(),
            )),
            "add" => {
                let ty = ty.ok_or_else(|| Refusal::invalid(format!("{method}: missing ProfileTypeID")))?;
                let props = cvip::api::rest(s, &fixed);
                check_profile_props(ty, &props, method)?;
                let id = self.id();
                self.profiles.push((ty, id, props));
                Ok(with_id(ack_ok(), "ProfileID", id))
            }
            "update" => {
                let id = need_int(s, "ProfileID", method)?;
                let props = cvip::api::rest(s, &fixed);
                let p = self
                    .profiles
                    .iter_mut()
                    .find(|p| p.1 == id)
                    .ok_or_else(|| fail(format!("{method}: no profile {id}")))?;
                check_profile_props(p.0, &props, method)?;
                for (k, v) in props.0 {
                    p.2.set(&k, v);
                }
                Ok(ack_ok())
            }
            "delete" => {
                let id = need_int(s, "ProfileID", method)?;
                if !self.profiles.iter().any(|p| p.1 == id) {
                    return Err(fail(format!("{method}: no profile {id}")));
                }
                if self.entities.iter().any(|e| e.services.values().any(|p| *p == id)) {
                    return Err(fail(format!("{method}: profile {id} is bound to a device service")));
                }
                self.profiles.retain(|p| p.1 != id);
                Ok(ack_ok())
            }
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }

    fn application_call(&mut self, op: &str, method: &str, s: &Struct) -> Reply {
        let ty = need_int(s, "EntityTypeID", method)?;
        let eid = need_int(s, "EntityID", method)?;
        if ty != EntityType::Camera.code() && ty != EntityType::Monitor.code() {
            return Err(fail(format!(
                "{method}: applications belong to camera (1) or monitor (2) entities, not type {ty}"
            )));
        }
        if !self.entities.iter().any(|e| e.id == eid && e.ty == ty) {
            return Err(fail(format!("{method}: no entity {eid} of type {ty}")));
        }
        let app = s.int("ApplicationTypeID").map(|v| v as u32);
        let props = cvip::api::rest(s, &["GUID", "AppGUID", "EntityTypeID", "EntityID", "ApplicationTypeID"]);
        match op {
            "list" => Ok(list(
                self.applications
                    .iter()
                    .filter(|a| a.0 == ty && a.1 == eid)
                    .map(|(t, e, a, p)| {
                        let mut st =
                            Struct::new().with("EntityTypeID", *t).with("EntityID", *e).with("ApplicationTypeID", *a);
                        st.0.extend(p.0.iter().cloned());
                        st.into()
                    })
                    .collect(),
            )),
            "add" => {
                let app = app.ok_or_else(|| Refusal::invalid(format!("{method}: missing ApplicationTypeID")))?;
                if !(1..=4).contains(&app) {
                    return Err(fail(format!("{method}: ApplicationTypeID {app} is not 1–4")));
                }
                if self.applications.iter().any(|a| a.0 == ty && a.1 == eid && a.2 == app) {
                    return Err(fail(format!("{method}: entity {eid} already has application {app}")));
                }
                self.applications.push((ty, eid, app, props));
                Ok(ack_ok())
            }
            "update" => {
                let app = app.ok_or_else(|| Refusal::invalid(format!("{method}: missing ApplicationTypeID")))?;
                let a = self
                    .applications
                    .iter_mut()
                    .find(|a| a.0 == ty && a.1 == eid && a.2 == app)
                    .ok_or_else(|| fail(format!("{method}: entity {eid} has no application {app}")))?;
                for (k, v) in props.0 {
                    a.3.set(&k, v);
                }
                Ok(ack_ok())
            }
            "delete" => {
                let before = self.applications.len();
                self.applications.retain(|a| !(a.0 == ty && a.1 == eid && app.is_none_or(|x| x == a.2)));
                if self.applications.len() == before {
                    return Err(fail(format!("{method}: entity {eid} has no such application")));
                }
                Ok(ack_ok())
            }
            _ => Err(Refusal::invalid(format!("no method {method}"))),
        }
    }
}

fn with_id(mut v: Value, k: &str, id: u32) -> Value {
    if let Value::Struct(s) = &mut v {
        s.push(k, id);
    }
    v
}

fn entity_struct(e: &Entity) -> Struct {
    let mut s = Struct::new()
        .with("EntityTypeID", e.ty)
        .with("GroupID", e.group)
        .with("EntityID", e.id)
        .with("EntityName", e.name.as_str())
        .with("EntityDesc", e.description.as_str());
    s.0.extend(e.props.0.iter().cloned());
    s
}

/// Entity properties the seed defines must have the right shape.
fn check_entity_props(ty: u32, p: &Struct, method: &str) -> Result<(), Refusal> {
    if ty == EntityType::Image.code() {
        if let Some(v) = p.get("ImageData") {
            let Value::Base64(b) = v else {
                return Err(fail(format!("{method}: ImageData must be base64")));
            };
            if b.len() > IMAGE_CHUNK_MAX {
                return Err(fail(format!(
                    "{method}: ImageData of {} bytes exceeds {IMAGE_CHUNK_MAX} in one packet: send it in parts",
                    b.len()
                )));
            }
        }
        if let Some(t) = p.int("ImageTypeID") {
            if !(1..=6).contains(&t) {
                return Err(fail(format!("{method}: ImageTypeID {t} is not 1–6")));
            }
        }
    }
    if ty == EntityType::Map.code() {
        if let Some(t) = p.int("MapEntityTypeID") {
            if !(1..=0x0c).contains(&t) {
                return Err(fail(format!("{method}: MapEntityTypeID {t} is not 1–12")));
            }
        }
    }
    if ty == EntityType::Camera.code() {
        if let Some(c) = p.int("Capability") {
            if c & !3 != 0 {
                return Err(fail(format!("{method}: Capability {c:#x} has bits other than PTZ (1) and AUX (2)")));
            }
        }
    }
    if ty == EntityType::Device.code() {
        if let Some(port) = p.int("Port") {
            if !(1..=65535).contains(&port) {
                return Err(fail(format!("{method}: Port {port} is not 1–65535")));
            }
        }
    }
    Ok(())
}

fn check_profile_props(ty: u32, p: &Struct, method: &str) -> Result<(), Refusal> {
    let known: &[&str] = match ty {
        1 => &["portType", "baudRate", "parity", "stopBit", "dataBit", "portMode"],
        2 => &["dateValid", "startDateTime", "endDateTime", "iteration", "specificDateTime", "timeBlock"],
        3 => &[
            "targetBitRate",
            "maxBitRate",
            "rateControl",
            "compression",
            "intrainterval",
            "QMax",
            "QMin",
            "frameRate",
            "skipRate",
            "resolution",
        ],
        4 => &["channel", "samplingFreq", "samplingBits", "format"],
        _ => return Err(fail(format!("{method}: ProfileTypeID {ty} is not 1–4"))),
    };
    for (k, _) in p.iter() {
        if !known.iter().any(|n| canon(n) == canon(k)) {
            return Err(fail(format!("{method}: {k:?} is not a property of profile type {ty} ({})", known.join(", "))));
        }
    }
    if ty == 3 {
        if let (Some(q0), Some(q1)) = (p.int("QMin"), p.int("QMax")) {
            if q0 > q1 {
                return Err(fail(format!("{method}: QMin {q0} is above QMax {q1}")));
            }
        }
    }
    Ok(())
}

/// A GUID-shaped string, unique per process and login.
pub fn new_guid(n: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    let x = format!("{a:016X}{b:016X}");
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}
