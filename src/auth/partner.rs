//! Authentication of the partner endpoints, whose credentials travel in the JSON body
//! (`partner_api_key`, `client_secret`). Owned by the partner-import work (issue 3).
