DROP TABLE IF EXISTS `ab_units__onboarding_checklist__20260329`;

DROP TABLE IF EXISTS `ab_qhist__onboarding_checklist__20260329`;

CREATE TEMPORARY TABLE ab_tmp_enrolled AS SELECT unit_id, MIN(exposed_at) AS first_exposed_at, COUNT(*) AS exposures, CASE MIN(CASE WHEN CAST(arm AS STRING) = @p6 THEN 0 WHEN CAST(arm AS STRING) = @p7 THEN 1 WHEN NOT arm IS NULL THEN -1 END) WHEN 0 THEN @p6 WHEN 1 THEN @p7 END AS arm, CASE WHEN MIN(CASE WHEN CAST(arm AS STRING) = @p6 THEN 0 WHEN CAST(arm AS STRING) = @p7 THEN 1 WHEN NOT arm IS NULL THEN -1 END) = MAX(CASE WHEN CAST(arm AS STRING) = @p6 THEN 0 WHEN CAST(arm AS STRING) = @p7 THEN 1 WHEN NOT arm IS NULL THEN -1 END) AND MIN(CASE WHEN CAST(arm AS STRING) = @p6 THEN 0 WHEN CAST(arm AS STRING) = @p7 THEN 1 WHEN NOT arm IS NULL THEN -1 END) >= 0 THEN 0 ELSE 1 END AS several_arms FROM `exposures` AS x WHERE experiment_key = @key AND exposed_at >= @start AND exposed_at < @end_exclusive AND exposed_at < @run_end GROUP BY unit_id HAVING NOT (@exclude_internal AND MAX(CASE WHEN is_internal THEN 1 ELSE 0 END) = 1) AND NOT (@exclude_bots AND MAX(CASE WHEN is_bot THEN 1 ELSE 0 END) = 1);

UPDATE ab_tmp_enrolled SET arm = f.arm, several_arms = f.several_arms FROM (SELECT p.unit_id, MIN(CASE WHEN x.exposed_at = p.first_exposed_at THEN x.arm END) AS arm, CASE WHEN MIN(x.arm) = MAX(x.arm) THEN 0 ELSE 1 END AS several_arms FROM ab_tmp_enrolled AS p JOIN `exposures` AS x ON x.unit_id = p.unit_id WHERE p.several_arms = 1 AND x.experiment_key = @key AND x.exposed_at >= @start AND x.exposed_at < @end_exclusive AND x.exposed_at < @run_end GROUP BY p.unit_id) AS f WHERE f.unit_id = ab_tmp_enrolled.unit_id;

CREATE TEMPORARY TABLE ab_tmp_metrics AS WITH ev AS (SELECT u.unit_id AS unit_key, e.event_name, e.occurred_at, e.value, u.first_exposed_at FROM `events` AS e JOIN ab_tmp_enrolled AS u ON u.unit_id = e.unit_id WHERE e.event_name IN (@p11, @p12, @p13) AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < @run_end) SELECT ev.unit_key, MAX(CASE WHEN ev.event_name = @p8 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '604800' SECOND THEN 1 ELSE 0 END) AS `m_activation_7d`, MAX(CASE WHEN ev.event_name = @p9 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '604800' SECOND THEN 1 ELSE 0 END) AS `m_support_ticket_rate`, SUM(CASE WHEN ev.event_name = @p10 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '604800' SECOND THEN 1 ELSE 0 END) AS `m_sessions_7d` FROM ev GROUP BY ev.unit_key;

CREATE TABLE `ab_units__onboarding_checklist__20260329` AS SELECT u.unit_id, u.arm, u.first_exposed_at, u.exposures, u.several_arms, CASE WHEN u.first_exposed_at + INTERVAL '604800' SECOND <= @run_end THEN COALESCE(a.`m_activation_7d`, 0) END AS `m_activation_7d`, CASE WHEN u.first_exposed_at + INTERVAL '604800' SECOND <= @run_end THEN COALESCE(a.`m_support_ticket_rate`, 0) END AS `m_support_ticket_rate`, CASE WHEN u.first_exposed_at + INTERVAL '604800' SECOND <= @run_end THEN COALESCE(a.`m_sessions_7d`, 0) END AS `m_sessions_7d` FROM ab_tmp_enrolled AS u LEFT JOIN ab_tmp_metrics AS a ON a.unit_key = u.unit_id;

DROP TABLE ab_tmp_enrolled;

DROP TABLE ab_tmp_metrics;

SELECT CASE WHEN c.table_name = 'exposures' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA()) THEN 'exposures' ELSE 'events' END AS source, LOWER(c.column_name) AS column_name, UPPER(c.data_type) AS data_type FROM information_schema.columns AS c WHERE (c.table_name = 'exposures' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA())) OR (c.table_name = 'events' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA())) UNION ALL SELECT CAST(NULL AS STRING) AS source, CAST(NULL AS STRING) AS column_name, CAST(NULL AS STRING) AS data_type FROM (SELECT 1 AS one) AS nothing WHERE FALSE;

WITH unexpected AS (SELECT c.source || '.' || c.column_name || ' is ' || c.data_type AS example FROM `ab_gx_batch` AS c WHERE (c.column_name IN ('experiment_key', 'unit_id', 'arm', 'event_name') AND NOT c.data_type IN ('VARCHAR', 'TEXT', 'CHARACTER VARYING', 'CHARACTER', 'STRING')) OR (c.column_name IN ('exposed_at', 'occurred_at') AND NOT c.data_type IN ('TIMESTAMP', 'TIMESTAMP WITHOUT TIME ZONE', 'TIMESTAMP_S', 'TIMESTAMP_MS', 'TIMESTAMP_NS', 'TIMESTAMP_NTZ')) OR (c.column_name IN ('is_internal', 'is_bot') AND c.data_type <> 'BOOLEAN') OR (c.column_name = 'value' AND NOT c.data_type IN ('DOUBLE', 'DOUBLE PRECISION', 'REAL', 'FLOAT', 'NUMERIC', 'DECIMAL', 'TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'NUMBER') AND c.data_type NOT LIKE 'DECIMAL(%') OR (c.column_name = 'properties' AND NOT c.data_type IN ('JSON', 'JSONB', 'VARIANT', 'OBJECT', 'VARCHAR', 'TEXT', 'CHARACTER VARYING', 'STRING'))), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

DROP TABLE IF EXISTS `ab_dq_exposures_2767332424`;

CREATE TABLE `ab_dq_exposures_2767332424` AS SELECT x.unit_id, x.arm, x.exposed_at FROM `exposures` AS x WHERE x.experiment_key = 'onboarding-checklist' AND (x.unit_id IS NULL OR x.arm IS NULL OR x.exposed_at IS NULL OR NOT x.arm IN ('control', 'treatment') OR x.exposed_at < CAST('2026-03-02 00:00:00' AS DATETIME) OR x.exposed_at >= CAST('<now>' AS DATETIME));

SELECT * FROM `ab_dq_exposures_2767332424`;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.unit_id IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.arm IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.exposed_at IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT x.arm AS example FROM `ab_gx_batch` AS x WHERE NOT x.arm IN ('control', 'treatment')), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.exposed_at < CAST('2026-03-02 00:00:00' AS DATETIME) OR x.exposed_at >= CAST('<now>' AS DATETIME)), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

SELECT x.unit_id, x.arm FROM `exposures` AS x WHERE x.experiment_key = 'onboarding-checklist';

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE NOT x.unit_id IS NULL AND NOT x.arm IS NULL GROUP BY x.unit_id HAVING MIN(x.arm) <> MAX(x.arm)), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

DROP TABLE IF EXISTS `ab_dq_events_2767332424`;

CREATE TABLE `ab_dq_events_2767332424` AS SELECT e.unit_id, e.event_name, e.occurred_at, e.value, e.experiment_key FROM (SELECT e.unit_id, e.event_name, e.occurred_at, e.value, e.experiment_key FROM `events` AS e WHERE (e.event_name IS NULL OR e.occurred_at IS NULL OR e.occurred_at > CAST('<now>' AS DATETIME) OR (NOT e.value IS NULL AND NOT (ABS(e.value) <= 1000000000000000.0)) OR e.experiment_key IS NULL OR e.experiment_key <> 'onboarding-checklist') OR (e.unit_id IS NULL AND e.occurred_at >= CAST('2026-03-02 00:00:00' AS DATETIME) AND e.occurred_at < CAST('<now>' AS DATETIME))) AS e LEFT JOIN `ab_units__onboarding_checklist__20260329` AS u ON u.unit_id = e.unit_id WHERE NOT u.unit_id IS NULL OR (e.unit_id IS NULL AND e.occurred_at >= CAST('2026-03-02 00:00:00' AS DATETIME) AND e.occurred_at < CAST('<now>' AS DATETIME));

SELECT * FROM `ab_dq_events_2767332424`;

WITH unexpected AS (SELECT e.event_name AS example FROM `ab_gx_batch` AS e WHERE e.unit_id IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.event_name IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.occurred_at IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE e.occurred_at > CAST('<now>' AS DATETIME)), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.event_name AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.event_name IN ('activated', 'session_start', 'support_ticket') AND NOT e.value IS NULL AND NOT (ABS(e.value) <= 1000000000000000.0)), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND NOT e.experiment_key IS NULL AND e.experiment_key <> 'onboarding-checklist' AND NOT EXISTS(SELECT 1 FROM `exposures` AS x WHERE x.unit_id = e.unit_id AND x.experiment_key = e.experiment_key AND x.experiment_key <> 'onboarding-checklist')), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.experiment_key IS NULL), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

SELECT * FROM `ab_units__onboarding_checklist__20260329` AS u;

WITH unexpected AS (SELECT u.unit_id AS example FROM `ab_gx_batch` AS u WHERE EXISTS(SELECT 1 FROM `exposures` AS x WHERE x.unit_id = u.unit_id AND x.experiment_key = 'onboarding-checklist' AND x.exposed_at >= CAST('2026-03-02 00:00:00' AS DATETIME) AND x.exposed_at < CAST('<now>' AS DATETIME) AND x.exposed_at < CAST('<now>' AS DATETIME) AND ((TRUE AND x.is_internal) OR (TRUE AND x.is_bot)))), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

WITH unexpected AS (SELECT 'activated' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'activated' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME)) UNION ALL SELECT 'session_start' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'session_start' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME)) UNION ALL SELECT 'support_ticket' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'support_ticket' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME))), examples AS (SELECT example, COUNT(*) AS rows_of_example FROM unexpected GROUP BY example) SELECT s.example, s.unexpected_count FROM (SELECT e.example, CAST(SUM(e.rows_of_example) OVER () AS INT64) AS unexpected_count FROM examples AS e) AS s CROSS JOIN (SELECT 1 AS one) AS j ORDER BY s.example NULLS LAST LIMIT 5;

SELECT arm, COUNT(*) AS units FROM `ab_units__onboarding_checklist__20260329` GROUP BY arm ORDER BY arm NULLS LAST;

SELECT COUNT(*) AS units, SUM(CASE WHEN several_arms = 1 THEN 1 ELSE 0 END) AS multi_arm, SUM(CASE WHEN exposures > 1 THEN 1 ELSE 0 END) AS repeat FROM `ab_units__onboarding_checklist__20260329`;

SELECT arm, COUNT(`m_activation_7d`) AS n_0, SUM(`m_activation_7d`) AS s_0, SUM(`m_activation_7d` * `m_activation_7d`) AS q_0, COUNT(`m_support_ticket_rate`) AS n_1, SUM(`m_support_ticket_rate`) AS s_1, SUM(`m_support_ticket_rate` * `m_support_ticket_rate`) AS q_1, COUNT(`m_sessions_7d`) AS n_2, SUM(`m_sessions_7d`) AS s_2, SUM(`m_sessions_7d` * `m_sessions_7d`) AS q_2 FROM `ab_units__onboarding_checklist__20260329` GROUP BY arm ORDER BY arm NULLS LAST;

SELECT CAST(first_exposed_at AS DATE) AS day, arm, COUNT(`m_activation_7d`) AS n, AVG(`m_activation_7d`) AS mean, VARIANCE(`m_activation_7d`) AS var FROM `ab_units__onboarding_checklist__20260329` WHERE NOT `m_activation_7d` IS NULL GROUP BY day, arm ORDER BY 1 NULLS LAST, 2 NULLS LAST;

CREATE TABLE IF NOT EXISTS `ab_readouts` (experiment STRING NOT NULL, run_date DATE NOT NULL, version INT64, status STRING NOT NULL, decision STRING NOT NULL, decision_reason STRING, config_sha256 STRING NOT NULL, code_version STRING, owner STRING, title STRING, written_at DATETIME NOT NULL, results_json STRING NOT NULL, attempt_id STRING NOT NULL, PRIMARY KEY (experiment, run_date, attempt_id) NOT ENFORCED);

CREATE TABLE IF NOT EXISTS `ab_metric_results` (experiment STRING NOT NULL, run_date DATE NOT NULL, metric STRING NOT NULL, role STRING, metric_type STRING, arm STRING NOT NULL, is_control BOOL NOT NULL, units INT64, events INT64, value FLOAT64, absolute FLOAT64, ci_low FLOAT64, ci_high FLOAT64, relative FLOAT64, relative_ci_low FLOAT64, relative_ci_high FLOAT64, p_value FLOAT64, p_value_adjusted FLOAT64, se FLOAT64, method STRING, attempt_id STRING NOT NULL, definition_sha256 STRING, catalog_metric STRING, catalog_file STRING, PRIMARY KEY (experiment, run_date, attempt_id, metric, arm) NOT ENFORCED);

CREATE TABLE IF NOT EXISTS `ab_gate_results` (experiment STRING NOT NULL, run_date DATE NOT NULL, gate STRING NOT NULL, ran BOOL NOT NULL, passed BOOL, detail STRING, outcome_json STRING, attempt_id STRING NOT NULL, PRIMARY KEY (experiment, run_date, attempt_id, gate) NOT ENFORCED);

CREATE TABLE IF NOT EXISTS `ab_checks` (experiment STRING NOT NULL, run_date DATE NOT NULL, position INT64 NOT NULL, name STRING NOT NULL, passed BOOL, detail STRING, metric STRING, arm STRING, observed FLOAT64, bound FLOAT64, attempt_id STRING NOT NULL, PRIMARY KEY (experiment, run_date, attempt_id, position) NOT ENFORCED);

CREATE OR REPLACE VIEW `ab_latest_readouts` AS SELECT r.* FROM `ab_readouts` AS r WHERE r.attempt_id = (SELECT c.attempt_id FROM `ab_readouts` AS c WHERE c.experiment = r.experiment AND c.run_date = r.run_date ORDER BY CASE WHEN c.decision = 'RERUN' THEN 1 ELSE 0 END NULLS LAST, c.written_at DESC, c.attempt_id DESC LIMIT 1);

CREATE OR REPLACE VIEW `ab_latest_metric_results` AS SELECT t.* FROM `ab_metric_results` AS t JOIN `ab_latest_readouts` AS l ON l.experiment = t.experiment AND l.run_date = t.run_date AND l.attempt_id = t.attempt_id;

CREATE OR REPLACE VIEW `ab_latest_gate_results` AS SELECT t.* FROM `ab_gate_results` AS t JOIN `ab_latest_readouts` AS l ON l.experiment = t.experiment AND l.run_date = t.run_date AND l.attempt_id = t.attempt_id;

CREATE OR REPLACE VIEW `ab_latest_checks` AS SELECT t.* FROM `ab_checks` AS t JOIN `ab_latest_readouts` AS l ON l.experiment = t.experiment AND l.run_date = t.run_date AND l.attempt_id = t.attempt_id;

DELETE FROM `ab_readouts` WHERE experiment = @experiment AND run_date = @run_date AND attempt_id = @attempt_id;

DELETE FROM `ab_metric_results` WHERE experiment = @experiment AND run_date = @run_date AND attempt_id = @attempt_id;

DELETE FROM `ab_gate_results` WHERE experiment = @experiment AND run_date = @run_date AND attempt_id = @attempt_id;

DELETE FROM `ab_checks` WHERE experiment = @experiment AND run_date = @run_date AND attempt_id = @attempt_id;

INSERT INTO `ab_readouts` (experiment, run_date, attempt_id, version, status, decision, decision_reason, config_sha256, code_version, owner, title, written_at, results_json) VALUES (@experiment, @run_date, @attempt_id, @version, @status, @decision, @decision_reason, @config_sha256, @code_version, @owner, @title, @written_at, @results_json);

INSERT INTO `ab_metric_results` (experiment, run_date, attempt_id, metric, role, metric_type, arm, is_control, units, events, value, absolute, ci_low, ci_high, relative, relative_ci_low, relative_ci_high, p_value, p_value_adjusted, se, method, definition_sha256, catalog_metric, catalog_file) VALUES (@experiment, @run_date, @attempt_id, @metric, @role, @metric_type, @arm, @is_control, @units, @events, @value, @absolute, @ci_low, @ci_high, @relative, @relative_ci_low, @relative_ci_high, @p_value, @p_value_adjusted, @se, @method, @definition_sha256, @catalog_metric, @catalog_file);

INSERT INTO `ab_gate_results` (experiment, run_date, attempt_id, gate, ran, passed, detail, outcome_json) VALUES (@experiment, @run_date, @attempt_id, @gate, @ran, @passed, @detail, @outcome_json);

INSERT INTO `ab_checks` (experiment, run_date, attempt_id, position, name, passed, detail, metric, arm, observed, bound) VALUES (@experiment, @run_date, @attempt_id, @position, @name, @passed, @detail, @metric, @arm, @observed, @bound);

SELECT r.run_date, r.decision, r.status, m.absolute, m.ci_low, m.ci_high, m.arm FROM `ab_latest_readouts` AS r LEFT JOIN `ab_metric_results` AS m ON m.experiment = r.experiment AND m.run_date = r.run_date AND m.attempt_id = r.attempt_id AND m.role = 'primary' AND NOT m.is_control WHERE r.experiment = @experiment AND r.run_date < @before ORDER BY r.run_date NULLS LAST, m.arm NULLS LAST;

SELECT results_json FROM `ab_readouts` WHERE experiment = @experiment AND run_date <= @run_date AND NOT (run_date = @run_date AND attempt_id = @attempt) ORDER BY run_date DESC, written_at DESC, attempt_id DESC LIMIT 1
