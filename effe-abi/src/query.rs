//! The query string, decoded: `application/x-www-form-urlencoded` pairs, as browsers send forms
//! and as `URLSearchParams` reads them.

use std::borrow::Cow;

use crate::Request;

impl<'a> Request<'a> {
    /// The query's `name=value` pairs, percent-decoded, `+` read as a space, in the order sent
    /// (a name may repeat). Invalid UTF-8 is replaced with `U+FFFD`. Nothing when there is no
    /// query.
    ///
    /// ```
    /// # effe_abi::testing::with_request(
    /// #     http::Request::get("/search?q=caf%C3%A9+au+lait&tag=a&tag=b&empty=").body("").unwrap(),
    /// #     |req| {
    /// let pairs: Vec<(String, String)> = req
    ///     .query_pairs()
    ///     .map(|(k, v)| (k.into_owned(), v.into_owned()))
    ///     .collect();
    /// assert_eq!(pairs[0], ("q".into(), "café au lait".into()));
    /// assert_eq!(pairs.len(), 4);
    /// assert_eq!(req.query_param("tag").as_deref(), Some("a"));
    /// assert_eq!(req.query_param("empty").as_deref(), Some(""));
    /// assert_eq!(req.query_param("missing"), None);
    /// # });
    /// ```
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        form_urlencoded::parse(self.query().unwrap_or("").as_bytes())
    }

    /// The first value of query parameter `name` (compared exactly, after decoding).
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        self.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}
