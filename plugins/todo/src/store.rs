//! One Context's database session: a connection and its statements, prepared once when the
//! Context starts and reused by every request it serves.

use effe_abi::Error;
use postgres::error::Severity;
use postgres::{Client, Config, NoTls, Row, Statement};
use serde::Serialize;

/// The table, made by Init if it is not there.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todos (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false
)";

/// A todo, as stored and as answered.
#[derive(Debug, Serialize)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub done: bool,
}

/// The connection, and the statements prepared on it.
pub struct Store {
    client: Client,
    list: Statement,
    insert: Statement,
    get: Statement,
    update: Statement,
    delete: Statement,
}

impl Store {
    /// Connects and prepares every statement: a Context's Start.
    pub fn open(config: &Config) -> Result<Store, Error> {
        let mut client = config.connect(NoTls)?;
        let mut prepare = |sql: &str| client.prepare(sql);
        Ok(Store {
            list: prepare("SELECT id, title, done FROM todos ORDER BY id")?,
            insert: prepare("INSERT INTO todos (title) VALUES ($1) RETURNING id, title, done")?,
            get: prepare("SELECT id, title, done FROM todos WHERE id = $1")?,
            update: prepare(
                "UPDATE todos SET title = coalesce($2, title), done = coalesce($3, done)
                 WHERE id = $1 RETURNING id, title, done",
            )?,
            delete: prepare("DELETE FROM todos WHERE id = $1")?,
            client,
        })
    }

    /// Every todo, oldest first.
    pub fn list(&mut self) -> Result<Vec<Todo>, Error> {
        let rows = self.client.query(&self.list, &[]);
        Ok(self.checked(rows)?.iter().map(Todo::from).collect())
    }

    /// Adds a todo; the stored one.
    pub fn insert(&mut self, title: &str) -> Result<Todo, Error> {
        let row = self.client.query_one(&self.insert, &[&title]);
        Ok(Todo::from(&self.checked(row)?))
    }

    /// The todo `id`, if there is one.
    pub fn get(&mut self, id: i64) -> Result<Option<Todo>, Error> {
        let row = self.client.query_opt(&self.get, &[&id]);
        Ok(self.checked(row)?.as_ref().map(Todo::from))
    }

    /// Changes the todo `id` (a `None` leaves that field as it is); the changed one, if there
    /// is one.
    pub fn update(
        &mut self,
        id: i64,
        title: Option<&str>,
        done: Option<bool>,
    ) -> Result<Option<Todo>, Error> {
        let row = self.client.query_opt(&self.update, &[&id, &title, &done]);
        Ok(self.checked(row)?.as_ref().map(Todo::from))
    }

    /// Deletes the todo `id`; whether there was one.
    pub fn delete(&mut self, id: i64) -> Result<bool, Error> {
        let deleted = self.client.execute(&self.delete, &[&id]);
        Ok(self.checked(deleted)? == 1)
    }

    /// Ends the session: a Context's Stop.
    pub fn close(self) -> Result<(), Error> {
        // A retired Context's connection is gone already: nothing to close, nothing to report.
        if !self.client.is_closed() {
            self.client.close()?;
        }
        Ok(())
    }

    /// A statement's `ERROR` (a constraint, a bad value) leaves the session usable: a plain
    /// error. Anything else (the socket closed, a `FATAL` as the server shuts down) means this
    /// connection is done for: the error retires the Context, and the host starts a fresh one.
    fn checked<T>(&self, result: Result<T, postgres::Error>) -> Result<T, Error> {
        result.map_err(|e| {
            let recoverable = !self.client.is_closed()
                && e.as_db_error()
                    .is_some_and(|db| db.parsed_severity() == Some(Severity::Error));
            if recoverable {
                Error::from(e)
            } else {
                Error::from(e).retire()
            }
        })
    }
}

impl From<&Row> for Todo {
    fn from(row: &Row) -> Todo {
        Todo {
            id: row.get("id"),
            title: row.get("title"),
            done: row.get("done"),
        }
    }
}
