DROP TABLE IF EXISTS `ab_units__refund_query_rewrite__20260531`;

DROP TABLE IF EXISTS `ab_qhist__refund_query_rewrite__20260531`;

CREATE TEMPORARY TABLE ab_tmp_enrolled AS SELECT unit_id, MIN(exposed_at) AS first_exposed_at, COUNT(*) AS exposures, MIN(arm) AS arm, CASE WHEN MIN(arm) = MAX(arm) THEN 0 ELSE 1 END AS several_arms FROM `exposures` AS x WHERE experiment_key = @key AND exposed_at >= @start AND exposed_at < @end_exclusive AND exposed_at < @run_end GROUP BY unit_id HAVING NOT (@exclude_internal AND MAX(CASE WHEN is_internal THEN 1 ELSE 0 END) = 1) AND NOT (@exclude_bots AND MAX(CASE WHEN is_bot THEN 1 ELSE 0 END) = 1);

UPDATE ab_tmp_enrolled SET arm = f.arm FROM (SELECT p.unit_id, MIN(x.arm) AS arm FROM ab_tmp_enrolled AS p JOIN `exposures` AS x ON x.unit_id = p.unit_id AND x.exposed_at = p.first_exposed_at WHERE p.several_arms = 1 AND x.experiment_key = @key GROUP BY p.unit_id) AS f WHERE f.unit_id = ab_tmp_enrolled.unit_id;

CREATE TEMPORARY TABLE ab_tmp_metrics AS WITH ev AS (SELECT u.unit_id AS unit_key, e.event_name, e.occurred_at, e.value, u.first_exposed_at, u.arm FROM `events` AS e JOIN ab_tmp_enrolled AS u ON u.unit_id = e.unit_id WHERE e.event_name IN (@p15, @p16, @p17) AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < @run_end) SELECT ev.unit_key, MAX(CASE WHEN ev.event_name = @p10 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '86400' SECOND THEN 1 ELSE 0 END) AS `m_escalation_rate`, MAX(CASE WHEN ev.event_name = @p11 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '86400' SECOND THEN 1 ELSE 0 END) AS `m_grounding_failure_rate`, SUM(CASE WHEN ev.event_name = @p12 AND NOT ev.value IS NULL THEN 1 ELSE 0 END) AS `n_p95_latency_ms`, ev.arm, b_0, COUNT(*) AS bucket_events, MIN(ev.value) AS low, MAX(ev.value) AS high FROM (SELECT ev.*, CASE WHEN ev.event_name = @p13 AND NOT ev.value IS NULL THEN SIGN(ev.value) * FLOOR(LN(1 + ABS(ev.value)) * 256) END AS b_0 FROM ev) AS ev GROUP BY GROUPING SETS ((ev.unit_key), (ev.arm, b_0));

CREATE TEMPORARY TABLE ab_tmp_unless AS WITH uev AS (SELECT u.unit_id AS unit_key, e.event_name, e.occurred_at, e.value, u.first_exposed_at FROM `events` AS e JOIN ab_tmp_enrolled AS u ON u.unit_id = e.unit_id WHERE e.event_name IN (@p8, @p9) AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < @run_end), useq AS (SELECT ev.*, MIN(CASE WHEN ev.event_name = @p6 THEN ev.occurred_at END) OVER (PARTITION BY ev.unit_key ORDER BY ev.occurred_at RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS next_unless_0 FROM uev AS ev) SELECT ev.unit_key, MAX(CASE WHEN ev.event_name = @p7 AND ev.occurred_at < ev.first_exposed_at + INTERVAL '86400' SECOND AND NOT COALESCE(ev.next_unless_0 <= ev.occurred_at + INTERVAL '600' SECOND, FALSE) THEN 1 ELSE 0 END) AS `m_resolution_rate` FROM useq AS ev GROUP BY ev.unit_key;

CREATE TABLE `ab_units__refund_query_rewrite__20260531` AS SELECT u.unit_id, u.arm, u.first_exposed_at, u.exposures, u.several_arms, CASE WHEN u.first_exposed_at + INTERVAL '86400' SECOND <= @run_end THEN COALESCE(ua.`m_resolution_rate`, 0) END AS `m_resolution_rate`, CASE WHEN u.first_exposed_at + INTERVAL '86400' SECOND <= @run_end THEN COALESCE(a.`m_escalation_rate`, 0) END AS `m_escalation_rate`, CASE WHEN u.first_exposed_at + INTERVAL '86400' SECOND <= @run_end THEN COALESCE(a.`m_grounding_failure_rate`, 0) END AS `m_grounding_failure_rate`, COALESCE(a.`n_p95_latency_ms`, 0) AS `n_p95_latency_ms` FROM ab_tmp_enrolled AS u LEFT JOIN ab_tmp_metrics AS a ON a.unit_key = u.unit_id LEFT JOIN ab_tmp_unless AS ua ON ua.unit_key = u.unit_id;

CREATE TABLE `ab_qhist__refund_query_rewrite__20260531` AS SELECT @p14 AS metric, arm, b_0 AS bucket, SUM(bucket_events) AS n, MIN(low) AS low, MAX(high) AS high FROM ab_tmp_metrics WHERE unit_key IS NULL AND NOT b_0 IS NULL GROUP BY arm, b_0;

DROP TABLE ab_tmp_enrolled;

DROP TABLE ab_tmp_metrics;

DROP TABLE ab_tmp_unless;

SELECT CASE WHEN c.table_name = 'exposures' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA()) THEN 'exposures' ELSE 'events' END AS source, LOWER(c.column_name) AS column_name, UPPER(c.data_type) AS data_type FROM information_schema.columns AS c WHERE (c.table_name = 'exposures' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA())) OR (c.table_name = 'events' AND c.table_schema = COALESCE(NULL, CURRENT_SCHEMA())) UNION ALL SELECT CAST(NULL AS STRING) AS source, CAST(NULL AS STRING) AS column_name, CAST(NULL AS STRING) AS data_type FROM (SELECT 1 AS one) AS nothing WHERE FALSE;

WITH unexpected AS (SELECT c.source || '.' || c.column_name || ' is ' || c.data_type AS example FROM `ab_gx_batch` AS c WHERE (c.column_name IN ('experiment_key', 'unit_id', 'arm', 'event_name') AND NOT c.data_type IN ('VARCHAR', 'TEXT', 'CHARACTER VARYING', 'CHARACTER', 'STRING')) OR (c.column_name IN ('exposed_at', 'occurred_at') AND NOT c.data_type IN ('TIMESTAMP', 'TIMESTAMP WITHOUT TIME ZONE', 'TIMESTAMP_S', 'TIMESTAMP_MS', 'TIMESTAMP_NS', 'TIMESTAMP_NTZ')) OR (c.column_name IN ('is_internal', 'is_bot') AND c.data_type <> 'BOOLEAN') OR (c.column_name = 'value' AND NOT c.data_type IN ('DOUBLE', 'DOUBLE PRECISION', 'REAL', 'FLOAT', 'NUMERIC', 'DECIMAL', 'TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'NUMBER') AND c.data_type NOT LIKE 'DECIMAL(%') OR (c.column_name = 'properties' AND NOT c.data_type IN ('JSON', 'JSONB', 'VARIANT', 'OBJECT', 'VARCHAR', 'TEXT', 'CHARACTER VARYING', 'STRING'))) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

SELECT x.unit_id, x.arm, x.exposed_at FROM `exposures` AS x WHERE x.experiment_key = 'refund-query-rewrite';

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.unit_id IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.arm IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.exposed_at IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT x.arm AS example FROM `ab_gx_batch` AS x WHERE NOT x.arm IN ('control', 'treatment')) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE x.exposed_at < CAST('2026-05-04 00:00:00' AS DATETIME) OR x.exposed_at >= CAST('<now>' AS DATETIME)) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT x.unit_id AS example FROM `ab_gx_batch` AS x WHERE NOT x.unit_id IS NULL AND NOT x.arm IS NULL GROUP BY x.unit_id HAVING MIN(x.arm) <> MAX(x.arm)) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

DROP TABLE IF EXISTS `ab_dq_events_3908c17f14`;

CREATE TABLE `ab_dq_events_3908c17f14` AS SELECT e.unit_id, e.event_name, e.occurred_at, e.value, e.experiment_key FROM `events` AS e WHERE e.unit_id IN (SELECT u.unit_id FROM `ab_units__refund_query_rewrite__20260531` AS u) AND (e.event_name IS NULL OR e.occurred_at IS NULL OR e.occurred_at > CAST('<now>' AS DATETIME) OR (NOT e.value IS NULL AND NOT (ABS(e.value) <= 1000000000000000.0)) OR e.experiment_key IS NULL OR e.experiment_key <> 'refund-query-rewrite') UNION ALL SELECT e.unit_id, e.event_name, e.occurred_at, e.value, e.experiment_key FROM `events` AS e WHERE e.unit_id IS NULL AND e.occurred_at >= CAST('2026-05-04 00:00:00' AS DATETIME) AND e.occurred_at < CAST('<now>' AS DATETIME);

SELECT * FROM `ab_dq_events_3908c17f14`;

WITH unexpected AS (SELECT e.event_name AS example FROM `ab_gx_batch` AS e WHERE e.unit_id IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.event_name IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.occurred_at IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE e.occurred_at > CAST('<now>' AS DATETIME)) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.event_name AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.event_name IN ('answer_served', 'escalated', 'grounding_failure', 'marked_solved') AND NOT e.value IS NULL AND NOT (ABS(e.value) <= 1000000000000000.0)) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND NOT e.experiment_key IS NULL AND e.experiment_key <> 'refund-query-rewrite' AND NOT EXISTS(SELECT 1 FROM `exposures` AS x WHERE x.unit_id = e.unit_id AND x.experiment_key = e.experiment_key AND x.experiment_key <> 'refund-query-rewrite')) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT e.unit_id AS example FROM `ab_gx_batch` AS e WHERE NOT e.unit_id IS NULL AND e.experiment_key IS NULL) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

SELECT * FROM `ab_units__refund_query_rewrite__20260531` AS u;

WITH unexpected AS (SELECT u.unit_id AS example FROM `ab_gx_batch` AS u WHERE EXISTS(SELECT 1 FROM `exposures` AS x WHERE x.unit_id = u.unit_id AND x.experiment_key = 'refund-query-rewrite' AND x.exposed_at >= CAST('2026-05-04 00:00:00' AS DATETIME) AND x.exposed_at < CAST('<now>' AS DATETIME) AND x.exposed_at < CAST('<now>' AS DATETIME) AND ((TRUE AND x.is_internal) OR (TRUE AND x.is_bot)))) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

WITH unexpected AS (SELECT 'answer_served' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'answer_served' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME)) UNION ALL SELECT 'escalated' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'escalated' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME)) UNION ALL SELECT 'grounding_failure' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'grounding_failure' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME)) UNION ALL SELECT 'marked_solved' AS example WHERE NOT EXISTS(SELECT 1 FROM `events` AS e JOIN `ab_gx_batch` AS u ON u.unit_id = e.unit_id WHERE e.event_name = 'marked_solved' AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < CAST('<now>' AS DATETIME))) SELECT s.example, c.unexpected_count FROM (SELECT DISTINCT example FROM unexpected ORDER BY example NULLS LAST LIMIT 5) AS s CROSS JOIN (SELECT COUNT(*) AS unexpected_count FROM unexpected) AS c;

SELECT arm, COUNT(*) AS units FROM `ab_units__refund_query_rewrite__20260531` GROUP BY arm ORDER BY arm NULLS LAST;

SELECT COUNT(*) AS units, SUM(CASE WHEN several_arms = 1 THEN 1 ELSE 0 END) AS multi_arm, SUM(CASE WHEN exposures > 1 THEN 1 ELSE 0 END) AS repeat FROM `ab_units__refund_query_rewrite__20260531`;

SELECT f.field_no AS field_no, c.arm AS arm, CASE f.field_no WHEN 0 THEN c.v0 WHEN 1 THEN c.v1 WHEN 2 THEN c.v2 END AS value FROM (SELECT d.arm AS arm, JSON_VALUE(d.doc, CONCAT('$."', @field_0, '"')) AS v0, JSON_VALUE(d.doc, CONCAT('$."', @field_1, '"')) AS v1, JSON_VALUE(d.doc, CONCAT('$."', @field_2, '"')) AS v2 FROM (SELECT x.arm AS arm, CAST(x.properties AS STRING) AS doc FROM `exposures` AS x WHERE x.experiment_key = @key AND x.exposed_at < @run_end GROUP BY 1, 2) AS d GROUP BY 1, 2, 3, 4) AS c CROSS JOIN UNNEST([STRUCT(0 AS field_no), STRUCT(1 AS field_no), STRUCT(2 AS field_no)]) AS f GROUP BY 1, 2, 3 ORDER BY 1 NULLS LAST, 2 NULLS LAST, 3 NULLS LAST;

SELECT DISTINCT arm FROM `ab_units__refund_query_rewrite__20260531`;

SELECT arm, COUNT(`m_resolution_rate`) AS n_0, SUM(`m_resolution_rate`) AS s_0, SUM(`m_resolution_rate` * `m_resolution_rate`) AS q_0, COUNT(`m_escalation_rate`) AS n_1, SUM(`m_escalation_rate`) AS s_1, SUM(`m_escalation_rate` * `m_escalation_rate`) AS q_1, COUNT(`m_grounding_failure_rate`) AS n_2, SUM(`m_grounding_failure_rate`) AS s_2, SUM(`m_grounding_failure_rate` * `m_grounding_failure_rate`) AS q_2 FROM `ab_units__refund_query_rewrite__20260531` GROUP BY arm ORDER BY arm NULLS LAST;

SELECT arm, bucket, n, low, high FROM `ab_qhist__refund_query_rewrite__20260531` WHERE metric = @metric ORDER BY arm NULLS LAST, bucket NULLS LAST;

WITH side AS (SELECT arm, unit_id, n_i, v FROM (SELECT u.arm AS arm, u.unit_id AS unit_id, u.`n_p95_latency_ms` AS n_i, e.value AS v FROM (WITH narrow AS (SELECT unit_id, event_name, occurred_at, value FROM `events` AS s WHERE event_name = @event AND NOT value IS NULL AND value >= @qedge) SELECT * FROM narrow) AS e JOIN `ab_units__refund_query_rewrite__20260531` AS u ON u.unit_id = e.unit_id WHERE e.event_name = @event AND NOT e.value IS NULL AND e.occurred_at >= u.first_exposed_at AND e.occurred_at < @run_end) AS s WHERE (arm = @qa0 AND v >= @ql0) OR (arm = @qa1 AND v >= @ql1)), ranked AS (SELECT arm, v, ROW_NUMBER() OVER (PARTITION BY arm ORDER BY v NULLS LAST) AS rn FROM side WHERE (arm = @qa0 AND v >= @ql0 AND v <= @qh0) OR (arm = @qa1 AND v >= @ql1 AND v <= @qh1)), wanted AS (SELECT CAST(@qa0 AS STRING) AS arm, CAST(@qb0 AS INT64) AS below, CAST(@qc0 AS INT64) AS above, CAST(@qf0 AS FLOAT64) AS fraction UNION ALL SELECT CAST(@qa1 AS STRING) AS arm, CAST(@qb1 AS INT64) AS below, CAST(@qc1 AS INT64) AS above, CAST(@qf1 AS FLOAT64) AS fraction), estimate AS (SELECT r.arm AS arm, MIN(CASE WHEN r.rn = w.below THEN r.v END) AS low_v, MIN(CASE WHEN r.rn = w.above THEN r.v END) AS high_v, MIN(w.fraction) AS fraction FROM ranked AS r JOIN wanted AS w ON w.arm = r.arm WHERE r.rn = w.below OR r.rn = w.above GROUP BY r.arm), per_unit AS (SELECT s.arm AS arm, s.unit_id AS unit_id, MAX(s.n_i) AS n_i, SUM(CASE WHEN s.v > x.low_v + x.fraction * (x.high_v - x.low_v) THEN 1 ELSE 0 END) AS j_i FROM side AS s JOIN estimate AS x ON x.arm = s.arm GROUP BY s.arm, s.unit_id) SELECT arm, 0 AS rn, CAST(NULL AS FLOAT64) AS v, SUM(j_i) AS sj, SUM(j_i * j_i) AS sjj, SUM(j_i * n_i) AS sjn FROM per_unit GROUP BY arm UNION ALL SELECT arm, rn, v, NULL, NULL, NULL FROM ranked WHERE (arm = @qa0 AND rn BETWEEN @qs0 AND @qe0) OR (arm = @qa1 AND rn BETWEEN @qs1 AND @qe1);

SELECT arm, COUNT(*) AS units, SUM(`n_p95_latency_ms`) AS sn, SUM(`n_p95_latency_ms` * `n_p95_latency_ms`) AS snn FROM `ab_units__refund_query_rewrite__20260531` WHERE `n_p95_latency_ms` > 0 GROUP BY arm;

SELECT CAST(first_exposed_at AS DATE) AS day, arm, COUNT(`m_resolution_rate`) AS n, AVG(`m_resolution_rate`) AS mean, VARIANCE(`m_resolution_rate`) AS var FROM `ab_units__refund_query_rewrite__20260531` WHERE NOT `m_resolution_rate` IS NULL GROUP BY day, arm ORDER BY 1 NULLS LAST, 2 NULLS LAST;

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
