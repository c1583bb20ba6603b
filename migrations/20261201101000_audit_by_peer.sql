-- Peer health reads a peer's recent audit rows (last request, requests and denials in the last
-- hour); without this index that is a scan of every partition in the window.
create index federation_audit_log_by_peer on federation_audit_log (peer_id, at desc);
