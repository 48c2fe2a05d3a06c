-- Demo stack only: the README's read-only role for the exporter. The tables do not
-- exist yet when this runs (the seed service creates them next), so SELECT is granted
-- through default privileges on what the postgres role creates in schema public.
CREATE ROLE convrs_exporter LOGIN PASSWORD 'demo-exporter-password';
ALTER ROLE convrs_exporter SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE convrs TO convrs_exporter;
GRANT USAGE ON SCHEMA public TO convrs_exporter;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO convrs_exporter;
GRANT pg_read_all_stats TO convrs_exporter;
