//! The OpenAPI document of `/api/v1`, generated from the handlers' own annotations and
//! types: the API's routes are registered through [`api_router`], which files each handler
//! under the path and method its annotation declares, so the document cannot list a route
//! that is not served, nor miss one that is.

use std::sync::{Arc, OnceLock};

use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, actions, api};

/// Every error answer: `{"error": "..."}`, saying what was wrong and what to do.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nightshift API",
        version = "1.0.0",
        description = "Everything the nightshift web UI shows and does. Reads are open on loopback; actions need `Authorization: Bearer TOKEN` with a role that allows them (operator: trigger, backfill, clear, rerun, cancel, pause; admin: also mark). Every action is recorded in the audit log. Errors are `{\"error\": \"...\"}`."
    ),
    servers((url = "/")),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Answers any route can give, documented on every operation: 401 (no or a wrong token),
/// 403 (a role or pipeline the token does not allow, or a foreign Origin), 429 (too many
/// failed attempts from the client's address) and 503 (the store is busy or unavailable).
fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = || {
        ResponseBuilder::new()
            .description("Error")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            for code in ["401", "403", "429", "503"] {
                op.responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error().into());
            }
        }
    }
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API's routes and, from the same registrations, its document.
pub fn api_router() -> (axum::Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::openapi))
        .routes(routes!(api::pipelines))
        .routes(routes!(api::pipeline))
        .routes(routes!(api::runs, actions::trigger))
        .routes(routes!(actions::backfill))
        .routes(routes!(actions::cancel_backfills))
        .routes(routes!(actions::pause))
        .routes(routes!(actions::unpause))
        .routes(routes!(api::calendar))
        .routes(routes!(api::run))
        .routes(routes!(actions::clear))
        .routes(routes!(actions::cancel_run))
        .routes(routes!(api::log))
        .routes(routes!(api::alerts))
        .routes(routes!(api::audit))
        .routes(routes!(api::status))
        .routes(routes!(actions::mark))
        .split_for_parts();
    let (router, mut doc) = (router, doc);
    document_common_errors(&mut doc);
    (router, doc)
}

/// The document as served at `/api/v1/openapi.json`.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        api_router()
            .1
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the document: {e}\"}}"))
    })
}

/// Every documented operation as `METHOD /path`, for tests and tools.
pub fn operations() -> Vec<String> {
    let doc = api_router().1;
    let mut out = vec![];
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ] {
            if op.is_some() {
                out.push(format!("{method} {path}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_api_route_with_its_bodies_and_errors() {
        let mut ops = operations();
        ops.sort();
        assert_eq!(
            ops,
            [
                "GET /api/v1/alerts",
                "GET /api/v1/audit",
                "GET /api/v1/openapi.json",
                "GET /api/v1/pipelines",
                "GET /api/v1/pipelines/{p}",
                "GET /api/v1/pipelines/{p}/calendar",
                "GET /api/v1/pipelines/{p}/runs",
                "GET /api/v1/pipelines/{p}/runs/{run_id}",
                "GET /api/v1/pipelines/{p}/runs/{run_id}/tasks/{task}/tries/{n}/log",
                "GET /api/v1/status",
                "POST /api/v1/pipelines/{p}/backfills",
                "POST /api/v1/pipelines/{p}/backfills/cancel",
                "POST /api/v1/pipelines/{p}/pause",
                "POST /api/v1/pipelines/{p}/runs",
                "POST /api/v1/pipelines/{p}/runs/{run_id}/cancel",
                "POST /api/v1/pipelines/{p}/runs/{run_id}/clear",
                "POST /api/v1/pipelines/{p}/runs/{run_id}/mark",
                "POST /api/v1/pipelines/{p}/unpause",
            ]
        );
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let trigger = &doc["paths"]["/api/v1/pipelines/{p}/runs"]["post"];
        assert_eq!(
            trigger["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/TriggerRequest"
        );
        assert_eq!(trigger["security"][0]["bearer"], serde_json::json!([]));
        assert_eq!(
            trigger["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
        // Reads answer with the shared types of `nightshift_engine::view`, one schema each.
        let runs = &doc["paths"]["/api/v1/pipelines/{p}/runs"]["get"];
        assert_eq!(
            runs["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/GridPage"
        );
        let run = &doc["components"]["schemas"]["Run"]["properties"];
        for field in [
            "run_id",
            "ds",
            "state",
            "trigger",
            "duration_ms",
            "rows_loaded",
        ] {
            assert!(run.get(field).is_some(), "Run lacks {field}: {run}");
        }
        for schema in [
            "Try",
            "TaskInstance",
            "PipelineSummary",
            "Alert",
            "AuditEntry",
            "Status",
        ] {
            assert!(
                doc["components"]["schemas"].get(schema).is_some(),
                "{schema}"
            );
        }
        let body = &doc["components"]["schemas"]["TriggerRequest"];
        assert_eq!(body["properties"]["ds"]["format"], "date");
        assert_eq!(body["required"], serde_json::json!(["ds"]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        println!("{}", serde_json::to_string_pretty(&doc).unwrap());
    }
}
