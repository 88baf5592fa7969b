-- Admin identities are pinned like agents: a certificate the CA signed for
-- spiffe://knockgate/admin/<name> is accepted only while its fingerprint is the
-- one recorded here and the admin is not revoked.
CREATE TABLE admins (
    name             TEXT PRIMARY KEY,
    cert_fingerprint TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    revoked_at       BIGINT
);
