-- The locator's state. Forward-only: a later change is a new numbered file, never an edit.
-- No Aadhaar number is ever stored: members are known by the vault's opaque member_ref only.

-- Every member_ref the locator has seen, registered (uan set) or not (uan null: a collection
-- waiting for a late registration, purged after the grace window). The row is also the lock
-- that serialises a registration and a collection of the same member across processes.
CREATE TABLE members (
    member_ref    text PRIMARY KEY,
    uan           text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    -- Set by a registry tombstone (its record timestamp): the member's collections up to then
    -- were the deleted worker's history and are not kept, whichever topic is read first.
    deregistered_at timestamptz
);
CREATE INDEX members_unregistered ON members (first_seen_at) WHERE uan IS NULL;

-- The registry, as the last WorkerRegistration of each uan, plus the derived current location.
CREATE TABLE workers (
    uan                     text PRIMARY KEY,
    member_ref              text NOT NULL,
    registration            bytea NOT NULL,      -- the WorkerRegistration, Avro single-object
    baselines               jsonb NOT NULL,      -- rule 11: [[from month or null, location], ...]
    current_state_lgd       smallint NOT NULL,
    current_district_lgd    integer NOT NULL,
    last_address_request_at timestamptz,         -- rule 9 cooldown, on event time
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_member_ref ON workers (member_ref);
CREATE INDEX workers_current_district ON workers (current_state_lgd, current_district_lgd);

-- One row per ration collection (source + transaction_id is the idempotency key of rule 8).
CREATE TABLE observations (
    source           text NOT NULL,
    transaction_id   text NOT NULL,
    member_ref       text NOT NULL,
    allocation_month char(7) NOT NULL,
    transacted_at    timestamptz NOT NULL,
    auth_mode        text NOT NULL,
    fps_id           text NOT NULL,
    state_lgd        smallint NOT NULL,
    district_lgd     integer NOT NULL,
    subdistrict_lgd  integer,
    village_town_lgd integer,
    pincode          text,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, transaction_id)
);
CREATE INDEX observations_member_ref ON observations (member_ref);

-- Every LocationChanged this service has decided to publish. active = a MOVED/RETURNED_HOME
-- change that has not been retracted; body = the Avro record exactly as published.
CREATE TABLE location_changes (
    event_id        uuid PRIMARY KEY,
    uan             text NOT NULL,
    change_type     text NOT NULL,
    effective_month char(7) NOT NULL,
    active          boolean NOT NULL,
    detected_at     timestamptz NOT NULL,
    body            bytea NOT NULL
);
CREATE INDEX location_changes_uan ON location_changes (uan);

-- Transactional outbox: written in the same transaction as the state and the offsets it
-- derives from; a relay publishes rows with the idempotent producer and then deletes them.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        bytea,
    value      bytea,
    headers    jsonb NOT NULL DEFAULT '[]'::jsonb,  -- [[name, hex value], ...]
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The consumer's position, committed with the state it produced (the source of truth; the
-- offsets also go to Kafka afterwards, for lag monitoring only).
CREATE TABLE consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
