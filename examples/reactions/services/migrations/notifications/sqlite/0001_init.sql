-- The notification service's table (SQLite). `event_id` is unique: a
-- redelivered event finds its notification already there and stores nothing.
CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    user_id          TEXT NOT NULL,
    actor_id         TEXT NOT NULL,
    actor_name       TEXT NOT NULL,
    post_id          TEXT NOT NULL,
    post_text        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    event_created_at BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    read_at          BIGINT
);
CREATE INDEX notifications_by_user ON notifications (user_id, created_at);
