//! A todo list as a JSON API on PostgreSQL: the way to hold a resource in an effe.
//!
//! Init reads `TODO_DATABASE_URL` and makes the table; each Context is one database connection
//! with its statements prepared, opened by Start and closed by Stop, so the server sees at most
//! `--max-contexts` connections and none once the pool has shrunk to zero. A request whose
//! connection turns out broken (the server restarted) fails and retires its Context: the next
//! request gets a fresh connection.
//!
//! Routes: `GET /todos`, `POST /todos` (`{"title"}`), `GET`, `PATCH` (`{"title"?, "done"?}`)
//! and `DELETE /todos/{id}`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod store;

use std::time::Duration;

use effe_abi::{Effe, Error, Request, ResponseWriter};
use serde::Deserialize;
use store::Store;

struct Todos {
    db: postgres::Config,
}

/// `POST /todos`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTodo {
    title: String,
}

/// `PATCH /todos/{id}`: what is absent stays as it is.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    title: Option<String>,
    done: Option<bool>,
}

/// What a request asks for, its body parsed and checked: all that `run` decides before it
/// touches the database.
#[derive(Debug, PartialEq)]
enum Call {
    List,
    Create(String),
    Get(i64),
    Update(i64, Changes),
    Delete(i64),
}

impl Effe for Todos {
    type Context = Store;

    fn init() -> Result<Self, Error> {
        let url = std::env::var("TODO_DATABASE_URL").map_err(|_| {
            Error::msg("TODO_DATABASE_URL is not set (e.g. postgresql://todo@localhost/todo)")
        })?;
        let mut db: postgres::Config = url.parse()?;
        db.application_name("effe-todo");
        // A Start holds a request's place in the queue: an unreachable server fails it rather
        // than stalls it.
        if db.get_connect_timeout().is_none() {
            db.connect_timeout(Duration::from_secs(5));
        }
        let mut setup = db.connect(postgres::NoTls)?;
        setup.batch_execute(store::SCHEMA)?;
        setup.close()?;
        Ok(Todos { db })
    }

    fn start(&self) -> Result<Store, Error> {
        Store::open(&self.db)
    }

    fn run(
        &self,
        db: &mut Store,
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        match parse(req)? {
            Call::List => {
                resp.json(&db.list()?)?;
            }
            Call::Create(title) => {
                let todo = db.insert(&title)?;
                resp.status(201)?
                    .header("location", format!("/todos/{}", todo.id))?
                    .json(&todo)?;
            }
            Call::Get(id) => {
                resp.json(&db.get(id)?.ok_or_else(no_such_todo)?)?;
            }
            Call::Update(id, changes) => {
                let todo = db.update(id, changes.title.as_deref(), changes.done)?;
                resp.json(&todo.ok_or_else(no_such_todo)?)?;
            }
            Call::Delete(id) => {
                if !db.delete(id)? {
                    return Err(no_such_todo());
                }
                resp.status(204)?;
            }
        }
        Ok(())
    }

    fn stop(&self, db: Store) -> Result<(), Error> {
        db.close()
    }
}

effe_abi::export_effe!(Todos);

/// Routes `req` and parses its body: 404 for a path that names nothing, 405 for a method it
/// does not take, 400 for a body that is not what the route takes.
fn parse(req: &Request<'_>) -> Result<Call, Error> {
    let id = match req.path().strip_prefix("/todos") {
        Some("") => None,
        Some(rest) => Some(
            rest.strip_prefix('/')
                .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|id| id.parse().ok())
                .ok_or_else(no_such_todo)?,
        ),
        None => return Err(Error::not_found("not found: the API is under /todos")),
    };
    Ok(match (req.method(), id) {
        ("GET", None) => Call::List,
        ("POST", None) => Call::Create(title(req.json::<NewTodo>()?.title)?),
        (_, None) => return Err(not_allowed("GET, POST")),
        ("GET", Some(id)) => Call::Get(id),
        ("PATCH", Some(id)) => {
            let mut changes: Changes = req.json()?;
            changes.title = changes.title.map(title).transpose()?;
            Call::Update(id, changes)
        }
        ("DELETE", Some(id)) => Call::Delete(id),
        (_, Some(_)) => return Err(not_allowed("GET, PATCH, DELETE")),
    })
}

/// A title, trimmed: not blank.
fn title(title: String) -> Result<String, Error> {
    match title.trim() {
        "" => Err(Error::bad_request("the title is blank")),
        trimmed => Ok(trimmed.to_owned()),
    }
}

fn not_allowed(allow: &str) -> Error {
    Error::with_status(405, "method not allowed").header("allow", allow)
}

fn no_such_todo() -> Error {
    Error::not_found("no such todo")
}

#[cfg(test)]
mod tests {
    use effe_abi::http;
    use effe_abi::testing::{with_request, TestHost};

    use super::*;

    fn parsed(method: &str, path: &str, body: &str) -> Result<Call, Error> {
        let req = http::Request::builder().method(method).uri(path);
        with_request(req.body(body).unwrap(), parse)
    }

    fn status(method: &str, path: &str, body: &str) -> Option<u16> {
        parsed(method, path, body).unwrap_err().status()
    }

    #[test]
    fn routes() {
        assert_eq!(parsed("GET", "/todos", "").unwrap(), Call::List);
        assert_eq!(parsed("GET", "/todos?page=2", "").unwrap(), Call::List);
        let create = parsed("POST", "/todos", r#"{"title":" milk "}"#);
        assert_eq!(create.unwrap(), Call::Create("milk".into()));
        assert_eq!(parsed("GET", "/todos/7", "").unwrap(), Call::Get(7));
        assert_eq!(parsed("DELETE", "/todos/7", "").unwrap(), Call::Delete(7));
        let done = Changes {
            done: Some(true),
            ..Changes::default()
        };
        assert_eq!(
            parsed("PATCH", "/todos/7", r#"{"done":true}"#).unwrap(),
            Call::Update(7, done)
        );
        let allow = |method, path| {
            let err = parsed(method, path, "").unwrap_err();
            assert_eq!(err.status(), Some(405));
            let (name, value) = &err.headers()[0];
            assert_eq!(name, "allow");
            String::from_utf8(value.clone()).unwrap()
        };
        assert_eq!(allow("DELETE", "/todos"), "GET, POST");
        assert_eq!(allow("POST", "/todos/7"), "GET, PATCH, DELETE");
    }

    #[test]
    fn paths_that_name_nothing_are_404() {
        for path in [
            "/",
            "/todo",
            "/todosx",
            "/todos/",
            "/todos/x",
            "/todos/+7",
            "/todos/7/x",
        ] {
            assert_eq!(status("GET", path, ""), Some(404), "{path}");
        }
        let too_big = format!("/todos/{}0", i64::MAX);
        assert_eq!(status("GET", &too_big, ""), Some(404));
    }

    #[test]
    fn bodies_that_are_not_what_the_route_takes_are_400() {
        for body in [
            "",
            "nope",
            "{}",
            r#"{"title":7}"#,
            r#"{"title":"x","id":1}"#,
            r#"{"title":" "}"#,
        ] {
            assert_eq!(status("POST", "/todos", body), Some(400), "{body}");
        }
        for body in [
            "[]",
            r#"{"done":"yes"}"#,
            r#"{"title":""}"#,
            r#"{"owner":"me"}"#,
        ] {
            assert_eq!(status("PATCH", "/todos/1", body), Some(400), "{body}");
        }
    }

    /// With the database down, Start fails: the client gets 503 and the reason is logged.
    #[test]
    fn a_start_that_cannot_connect_is_503() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let db = "postgresql://todo@127.0.0.1:1/todo".parse().unwrap();
        let mut host = TestHost::with(Todos { db });
        let resp = host.call(http::Request::get("/todos").body("").unwrap());
        assert_eq!(resp.status(), 503);
        assert!(
            host.logs()[0].starts_with("start failed: "),
            "{:?}",
            host.logs()
        );
        assert_eq!(host.finish().unwrap().starts, 0);
    }
}
