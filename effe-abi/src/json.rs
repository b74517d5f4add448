//! JSON bodies through serde (the `json` feature).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Request, ResponseWriter};

impl Request<'_> {
    /// The body, parsed as JSON into `T`.
    ///
    /// # Errors
    ///
    /// A body that is not `T` in JSON is the client's mistake: an error with status `400`
    /// whose message says what is wrong (`?` sends it to the client as is).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.body())
            .map_err(|e| Error::bad_request(format_args!("invalid JSON body: {e}")))
    }
}

impl ResponseWriter<'_> {
    /// Answers `value` as JSON, with `content-type: application/json` (replacing any set
    /// before). The status stays as set (200 unless set).
    ///
    /// # Errors
    ///
    /// If `value` cannot be serialized (a map with non-string keys, a failing `Serialize`):
    /// nothing is written.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<&mut Self, Error> {
        let body = serde_json::to_vec(value)?;
        Ok(self.content_type("application/json")?.body(body))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::with_request;

    #[derive(serde::Deserialize, Debug)]
    struct Todo {
        #[allow(dead_code)]
        title: String,
    }

    #[test]
    fn a_body_that_is_not_the_type_is_a_400() {
        let post = |body: &str| http::Request::post("/").body(body.to_owned()).unwrap();
        with_request(post(r#"{"title":"x"}"#), |req| req.json::<Todo>().unwrap());
        let err = with_request(post(r#"{"name":1}"#), |req| req.json::<Todo>().unwrap_err());
        assert_eq!(err.status(), Some(400));
        assert!(
            err.message()
                .starts_with("invalid JSON body: missing field `title`"),
            "{err:?}"
        );
    }

    #[test]
    fn json_answers_set_the_content_type() {
        let mut buf = crate::abi::ResponseBuffer::new();
        buf.writer().json(&serde_json::json!({"a": 1})).unwrap();
        let (_, headers, body) = buf.into_parts();
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, br#"{"a":1}"#);
    }
}
