"""One module per streaming role (streams.topology.ROLE_TABLE names them): each holds its batch
function, its typed dependencies and its `RoleHandler` for the runtime (streams.runtime)."""
