-- "My pages" lists a signed-in resident's chat conversations, newest first.
CREATE INDEX signaling_queue_entries_resident ON signaling_queue_entries(resident, enqueued_at);
