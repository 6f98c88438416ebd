# Shared fixtures for the telerad.access tests: a small, self-contained data
# document (independent of policies/data/data.json) and base inputs.
package telerad.access_test

# 2025-01-11 12:00 UTC, a Saturday: outside every coverage window below
saturday_noon := 1736596800

# 2025-01-06 12:00 UTC and 07:00 UTC, a Monday
monday_noon := 1736164800

monday_early := 1736146800

reading_group := "northstar-reading"

facilities := {
	"st-olaf": {
		"name": "St. Olaf Community Hospital",
		"jurisdiction": "US-MN",
		"required_acr": "1",
		"max_auth_age_seconds": 43200,
		"accepts_credentialing_by_proxy": true,
	},
	"bay-general": {
		"name": "Bay General Medical Center",
		"jurisdiction": "US-CA",
		"required_acr": "2",
		"max_auth_age_seconds": 3600,
		"accepts_credentialing_by_proxy": false,
	},
	"half-configured": {"name": "Half Configured Clinic", "jurisdiction": "US-TX"},
}

radiologists := {
	# privileged at both facilities, licensed in both states, may download
	"npi:1000000001": {
		"licenses": ["US-MN", "US-CA"],
		"privileges": ["st-olaf", "bay-general"],
		"proxy_credentialed": [],
		"download": true,
		"group": reading_group,
	},
	# credentialed by proxy only, Minnesota license only, no download
	"npi:1000000002": {
		"licenses": ["US-MN"],
		"privileges": [],
		"proxy_credentialed": ["st-olaf", "bay-general"],
		"download": false,
		"group": reading_group,
	},
	# privileged at bay-general but not licensed in California
	"npi:1000000003": {
		"licenses": ["US-MN"],
		"privileges": ["bay-general"],
		"proxy_credentialed": [],
		"download": false,
		"group": null,
	},
	# licensed in California, no privileges anywhere
	"npi:1000000004": {
		"licenses": ["US-CA"],
		"privileges": [],
		"proxy_credentialed": [],
		"download": false,
		"group": null,
	},
	"npi:1000000009": {"licenses": ["US-MN"]},
}

# worklist assignments as the broker puts them into input.resource.assignment (from the RIS's
# events on the worklist topic): study 1.2.3.1 is ada's, 1.2.3.2 is shared by three readers
assignment_1 := {
	"status": "assigned",
	"readers": ["npi:1000000001"],
	"facility": "st-olaf",
	"priority": "routine",
	"assigning_system": "ris-st-olaf",
}

assignment_2 := object.union(assignment_1, {"readers": ["npi:1000000002", "npi:1000000003", "npi:1000000004"]})

coverage := {reading_group: [{
	"facility": "st-olaf",
	"weekdays": [1, 2, 3, 4, 5],
	"start_hour": 8,
	"end_hour": 18,
}]}

settings := {"link_ttl_seconds": {"default": 600, "sensitive": 300, "break_glass": 180}}

# A radiologist issuing a view link for a study on their worklist, on a
# Saturday (so group coverage does not apply), with fresh MFA.
radiologist_input := {
	"action": "issue_link",
	"operations": ["view"],
	"subject": {
		"id": "npi:1000000001",
		"issuer": "https://idp.example.org/realms/hospital-a",
		"roles": ["radiologist"],
		"acr": "2",
		"amr": ["pwd", "otp"],
		"auth_time": saturday_noon - 600,
		"group": reading_group,
	},
	"resource": {
		"study_uid": "1.2.3.1",
		"facility": "st-olaf",
		"labels": [],
		"patient_ref": "pseudonym-7f3a",
		"referring_physician": "npi:2000000001",
		"assignment": assignment_1,
	},
	"context": {
		"now": saturday_noon,
		"client_ip": "10.0.0.1",
		"break_glass": null,
		"consent": {"external_reading": "permit"},
	},
}

# the referring physician of the study above, viewing it
referring_input := json.patch(radiologist_input, [
	put("/subject/id", "npi:2000000001"),
	put("/subject/roles", ["referring_physician"]),
	put("/subject/group", null),
])

auditor_input := json.patch(radiologist_input, [
	put("/action", "read_audit"),
	put("/subject/id", "auditor:42"),
	put("/subject/roles", ["auditor"]),
	put("/subject/group", null),
])

# a hospital's consent registry (a service account) recording consent for St. Olaf
registry_input := json.patch(radiologist_input, [
	put("/action", "record_consent"),
	put("/operations", ["record"]),
	put("/subject/id", "sub:consent-registry"),
	put("/subject/roles", ["consent_registry"]),
	put("/subject/privileges", ["st-olaf"]),
	put("/subject/group", null),
	drop("/resource/study_uid"),
	drop("/resource/labels"),
	drop("/resource/patient_ref"),
	drop("/context/consent"),
])

justification := "trauma bay CT, on-call radiologist unreachable"

# JSON patch operations
put(path, value) := {"op": "add", "path": path, "value": value}

drop(path) := {"op": "remove", "path": path}

reason(code, message) := {"code": code, "message": message}

no_obligations := {
	"link_ttl_seconds": 0,
	"operations": [],
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": false,
	"redeem_window_seconds": 0,
}

denied(reasons) := {"allow": false, "reasons": reasons, "obligations": {
	"link_ttl_seconds": 0,
	"operations": [],
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": false,
	"redeem_window_seconds": 0,
}}

step_up_denied(acr, max_age) := {
	"allow": false,
	"reasons": [{
		"code": "step_up_required",
		"message": sprintf("authentication at acr >= %s within the last %d seconds is required", [acr, max_age]),
	}],
	"obligations": {
		"link_ttl_seconds": 0,
		"operations": [],
		"alert": false,
		"break_glass": false,
		"bearer_only_redeem": false,
		"redeem_window_seconds": 0,
		"step_up": {"acr": acr, "max_age": max_age},
	},
}

# obligations of an allowed, non-break-glass request
granted(ttl, operations, bearer) := {
	"link_ttl_seconds": ttl,
	"operations": operations,
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": bearer,
	"redeem_window_seconds": 0,
	"unfingerprinted": "refuse",
}

# obligations of an allowed redeem (the decision window of the data's settings)
redeemed(ttl, operations, window) := {
	"link_ttl_seconds": ttl,
	"operations": operations,
	"alert": false,
	"break_glass": false,
	"bearer_only_redeem": false,
	"redeem_window_seconds": window,
	"unfingerprinted": "refuse",
}
