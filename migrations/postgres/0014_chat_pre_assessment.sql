-- Chat pre-assessment in the browser (issue 25). Keep it in step with
-- migrations/sqlite/0013_chat_pre_assessment.sql.
--
-- `services.chat`: the service's pre-assessment may be done by chat, so it
--   offers "Chat with us now".
-- `services.bookable`: the service has times to book. Every service so far
--   has; `general` below has not.
ALTER TABLE services ADD COLUMN chat BIGINT NOT NULL DEFAULT 0 CHECK (chat IN (0, 1));
ALTER TABLE services ADD COLUMN bookable BIGINT NOT NULL DEFAULT 1 CHECK (bookable IN (0, 1));
-- The demo's services offer chat, except children and families, whose
-- pre-assessment starts in a meeting; databases seeded before this
-- migration get the same.
UPDATE services SET chat = 1
WHERE code IN ('ekonomiskt-bistand', 'stod-till-anhoriga', 'missbruk-beroende', 'vald-i-nara-relationer');

-- "I don't know": a resident who cannot tell which service fits chats with
-- their own municipality, whose staff may all take it. It books nothing,
-- and every step but general information stays with the home municipality.
INSERT INTO services (code, name_key, anonymous_chat, slot_minutes, buffer_minutes, discreet, chat, bookable)
VALUES ('general', 'service.general', 0, 45, 0, 0, 1, 0)
ON CONFLICT DO NOTHING;
INSERT INTO policy_rules (service_code, step, rule, legal_basis) VALUES
('general', 'information', 'open', 'Allmän information och rådgivning är inte myndighetsutövning och får ges av vilken deltagande kommun som helst (SoL 3 kap. 1 §).'),
('general', 'pre_assessment', 'home_only', 'Den som inte vet vilken insats som passar får en första bedömning av sin hemkommun, som ansvarar för den (SoL 2 kap. 1 §).'),
('general', 'meeting', 'home_only', 'Myndighetsutövning som endast hemkommunen får utföra. Sekretess enligt OSL 26 kap. gäller mellan kommuner.'),
('general', 'investigation', 'home_only', 'Myndighetsutövning som endast hemkommunen får utföra. Sekretess enligt OSL 26 kap. gäller mellan kommuner.'),
('general', 'decision', 'home_only', 'Myndighetsutövning som endast hemkommunen får utföra. Sekretess enligt OSL 26 kap. gäller mellan kommuner.'),
('general', 'follow_up', 'home_only', 'Myndighetsutövning som endast hemkommunen får utföra. Sekretess enligt OSL 26 kap. gäller mellan kommuner.')
ON CONFLICT DO NOTHING;
UPDATE catalog_version SET version = version + 1 WHERE id = 1;

-- A message left through the offline form while no eligible staff member
-- was online. `resident_id` is set for a signed-in resident only; an
-- anonymous sender is known by the contact they gave and nothing else.
CREATE TABLE offline_messages (
    id TEXT PRIMARY KEY NOT NULL,
    service_code TEXT NOT NULL REFERENCES services(code),
    home_code TEXT NOT NULL REFERENCES municipalities(code),
    resident_id TEXT REFERENCES residents(id) ON DELETE SET NULL,
    message TEXT NOT NULL,
    name TEXT,
    contact_email TEXT,
    contact_phone TEXT,
    created_at BIGINT NOT NULL,
    handled_at BIGINT,
    handled_by TEXT REFERENCES staff(id),
    CHECK (contact_email IS NOT NULL OR contact_phone IS NOT NULL)
);
-- The municipalities whose staff may answer a message: those the policy
-- let perform the pre-assessment for the sender's home when it came, as
-- for a chat in the queue. Staff read their municipality's rows only.
CREATE TABLE offline_message_municipalities (
    message_id TEXT NOT NULL REFERENCES offline_messages(id) ON DELETE CASCADE,
    municipality_code TEXT NOT NULL,
    PRIMARY KEY (municipality_code, message_id)
);

-- Replies staff pick from in a chat, per service and language, in order.
CREATE TABLE canned_responses (
    service_code TEXT NOT NULL REFERENCES services(code) ON DELETE CASCADE,
    language TEXT NOT NULL CHECK (language IN ('sv', 'en', 'fi', 'ar')),
    id TEXT NOT NULL,
    position BIGINT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (service_code, language, id)
);
