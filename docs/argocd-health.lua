-- Argo CD health check for rackscale.dev/InferenceDeployment.
-- Healthy: every wanted replica serves (condition Ready=True) for the current generation.
-- Degraded: the operator cannot reach the spec without capacity or a fix (Stalled=True, phase
--   Failed, or some replicas placed while others cannot be: Degraded=True ReplicasUnplaced).
-- Progressing: anything else (not yet observed, placing, waiting for pods, restarting a replica,
--   updating, scaling).
-- The message is the one of the condition that decided.

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function said(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status
local generation = obj.metadata.generation

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the rackscale operator to reconcile this InferenceDeployment"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the rackscale operator to observe generation " .. generation
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local degraded = condition(conditions, "Degraded")
local placed = condition(conditions, "Placed")
local progressing = condition(conditions, "Progressing")

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said(placed, "The operator cannot use this spec")
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled, "Waiting for capacity")
  return hs
end
if degraded ~= nil and degraded.status == "True" and degraded.reason == "ReplicasUnplaced" then
  hs.status = "Degraded"
  hs.message = said(degraded, "Some replicas cannot be placed")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready, "All replicas ready")
  return hs
end
if ready == nil and status.phase == "Ready" then
  -- status written by an operator older than the Ready condition
  hs.status = "Healthy"
  hs.message = "All replicas ready"
  return hs
end

hs.status = "Progressing"
if degraded ~= nil and degraded.status == "True" then
  hs.message = said(degraded, "Restarting a replica")
elseif ready ~= nil then
  hs.message = said(ready, said(progressing, "Placing replicas"))
else
  hs.message = said(progressing, "Placing replicas")
end
return hs
