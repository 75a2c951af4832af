-- The reaction service's tables (SQLite).
CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE posts (
    id         TEXT PRIMARY KEY,
    author_id  TEXT NOT NULL REFERENCES users (id),
    text       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One reaction of a kind per user and post: reacting twice is a no-op.
CREATE TABLE reactions (
    id         TEXT PRIMARY KEY,
    post_id    TEXT NOT NULL REFERENCES posts (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    kind       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (post_id, user_id, kind)
);
CREATE INDEX reactions_by_post ON reactions (post_id);

-- The transactional outbox: written in the same transaction as the reaction,
-- published to Courier by the relay (with `id` as the Courier message id),
-- then stamped `sent_at`.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    msg_key    TEXT,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at    BIGINT
);
CREATE INDEX outbox_pending ON outbox (sent_at, seq);
