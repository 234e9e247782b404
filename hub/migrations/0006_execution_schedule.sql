-- The schedule a flow's run was for (a tick, or the schedule's trigger), so the schedule's own
-- executions list finds its runs whatever later happens to the flow's schedule.
ALTER TABLE flow_executions ADD COLUMN schedule_id TEXT;
CREATE INDEX flow_executions_by_schedule ON flow_executions (schedule_id, created_at);
