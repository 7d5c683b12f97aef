//! The last rendered answer per shape and resource, reused while nothing it depends on changed:
//! a warm-cache token request then costs a comparison instead of rendering a body.
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::core::cache::CachedToken;
use crate::protocol::{Shape, TokenRequest};

/// The last answer rendered per [`Shape`] and resource, reused while the same token, resource and
/// second come again: a warm-cache request then costs a comparison and a reference count
/// instead of rendering and copying a kilobyte-sized body, which was about a sixth of the
/// request path's instructions (callgrind, bench/run.py's IMDS run). The token identifies the
/// identity as well: a cached token belongs to one client id and scope. A slot holds one answer,
/// so clients alternating between resources that share a slot re-render, as without it.
#[derive(Default)]
pub(super) struct Answers {
    slots: [ArcSwapOption<Answer>; Shape::COUNT * Answers::WAYS],
}

struct Answer {
    token: Arc<CachedToken>,
    resource: Box<str>,
    /// The second it was rendered in, for shapes whose bytes change with it ([`Shape::ticks`]).
    second: u64,
    body: Bytes,
}

impl Answers {
    /// Slots per shape, chosen by the resource's hash.
    const WAYS: usize = 4;

    pub(super) fn get(
        &self,
        shape: Shape,
        token: &Arc<CachedToken>,
        req: &TokenRequest<'_>,
    ) -> Bytes {
        let second = if shape.ticks() {
            crate::core::federated::now_epoch()
        } else {
            0
        };
        self.get_at(second, shape, token, req)
    }

    fn get_at(
        &self,
        second: u64,
        shape: Shape,
        token: &Arc<CachedToken>,
        req: &TokenRequest<'_>,
    ) -> Bytes {
        use std::hash::BuildHasher as _;
        let way = foldhash::fast::FixedState::default().hash_one(&*req.resource) as usize;
        let slot = &self.slots[shape.index() * Self::WAYS + way % Self::WAYS];
        if let Some(a) = &*slot.load()
            && Arc::ptr_eq(&a.token, token)
            && a.second == second
            && *a.resource == *req.resource
        {
            return a.body.clone();
        }
        // Rendered after `second` was read: a body from a later second is never reused for it.
        let body = Bytes::from(shape.render(token, req));
        slot.store(Some(Arc::new(Answer {
            token: Arc::clone(token),
            resource: req.resource.as_ref().into(),
            second,
            body: body.clone(),
        })));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::entra::IssuedToken;
    use crate::core::secret::Secret;
    use crate::protocol::user_agent::ExpiresOnFormat;

    fn token(text: &str) -> Arc<CachedToken> {
        Arc::new(CachedToken::new(IssuedToken {
            access_token: Secret::new(text.to_string()),
            expires_in: 3600,
            ext_expires_in: None,
            refresh_in: None,
        }))
    }

    fn req(resource: &str) -> TokenRequest<'_> {
        TokenRequest {
            client_id: "11111111-1111-1111-1111-111111111111",
            resource: resource.into(),
        }
    }

    fn field(body: &[u8], name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(body).expect("json");
        v[name].clone()
    }

    #[test]
    fn an_answer_is_reused_only_for_the_same_token_resource_shape_and_second() {
        let answers = Answers::default();
        let (a, b) = (token("token-a"), token("token-b"));
        let first = answers.get_at(100, Shape::Imds, &a, &req("https://vault.azure.net"));
        let again = answers.get_at(100, Shape::Imds, &a, &req("https://vault.azure.net"));
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "same inputs: the same bytes, not a copy"
        );
        // Any other input renders anew, with what that input asks for.
        let other = answers.get_at(100, Shape::Imds, &a, &req("https://storage.azure.com"));
        assert_eq!(field(&other, "resource"), "https://storage.azure.com");
        // More resources than slots: some share one, and each still gets its own echo.
        let resources: Vec<String> = (0..3 * Answers::WAYS)
            .map(|i| format!("https://r{i}.example/"))
            .collect();
        for _round in 0..2 {
            for r in &resources {
                let body = answers.get_at(100, Shape::Imds, &a, &req(r));
                assert_eq!(field(&body, "resource"), r.as_str());
            }
        }
        let renewed = answers.get_at(100, Shape::Imds, &b, &req("https://vault.azure.net"));
        assert_eq!(field(&renewed, "access_token"), "token-b");
        let later = answers.get_at(101, Shape::Imds, &b, &req("https://vault.azure.net"));
        assert_ne!(
            later.as_ptr(),
            renewed.as_ptr(),
            "a new second renders anew"
        );
        let epoch = answers.get_at(
            0,
            Shape::AppService2017(ExpiresOnFormat::Epoch),
            &b,
            &req("r"),
        );
        let date = answers.get_at(
            0,
            Shape::AppService2017(ExpiresOnFormat::Date),
            &b,
            &req("r"),
        );
        assert!(
            field(&epoch, "expires_on")
                .as_str()
                .is_some_and(|s| s.bytes().all(|c| c.is_ascii_digit()))
        );
        assert!(
            field(&date, "expires_on")
                .as_str()
                .is_some_and(|s| s.ends_with(" +00:00"))
        );
        let v2019 = answers.get_at(0, Shape::AppService2019, &b, &req("r"));
        assert_eq!(
            field(&v2019, "client_id"),
            "11111111-1111-1111-1111-111111111111"
        );
        // Each shape kept its own answer.
        let epoch_again = answers.get_at(
            0,
            Shape::AppService2017(ExpiresOnFormat::Epoch),
            &b,
            &req("r"),
        );
        assert_eq!(epoch_again.as_ptr(), epoch.as_ptr());
    }
}
