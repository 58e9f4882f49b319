//! Route policies: CORS, `mcpAuthorization` (per tool, prompt and resource)
//! and the CEL machinery the authorization and access-log stages use.

pub mod cel;
pub mod cors;
pub mod mcp_authz;
