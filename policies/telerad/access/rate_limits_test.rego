# Rate limits: the data may lower a role's per-person limit for an action; the
# decision carries it as the obligation rate_limit, and only then.
package telerad.access_test

import data.telerad.access

limited_settings := object.union(settings, {"rate_limits": {
	"radiologist": {
		"issue_link": {"burst": 5, "per_minute": 1},
		"redeem": {"burst": 1000},
	},
	"teaching": {"issue_link": {"burst": 2, "per_minute": 4}},
}})

auditor_limited_settings := object.union(settings, {"rate_limits": {"auditor": {"issue_link": {"burst": 1}}}})

malformed_settings := object.union(settings, {"rate_limits": {"radiologist": {"issue_link": {
	"burst": "5",
	"per_minute": -1,
}}}})

test_a_roles_rate_limit_is_an_obligation_of_its_action if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as limited_settings
	d.allow == true
	d.obligations == object.union(
		granted(600, ["view"], true),
		{"rate_limit": {"burst": 5, "per_minute": 1}},
	)
}

test_a_redeem_gets_the_redeem_limit_only if {
	req := json.patch(radiologist_input, [put("/action", "redeem")])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as limited_settings
	d.obligations == object.union(redeemed(600, ["view"], 30), {"rate_limit": {"burst": 1000}})
}

test_with_several_roles_the_lowest_of_each_field_holds if {
	req := json.patch(radiologist_input, [put("/subject/roles", ["radiologist", "teaching"])])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as limited_settings
	d.obligations.rate_limit == {"burst": 2, "per_minute": 1}
}

test_no_rate_limit_without_data_for_the_role if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as auditor_limited_settings
	d.obligations == granted(600, ["view"], true)
}

test_a_malformed_limit_is_no_rate_limit if {
	d := access.decision with input as radiologist_input
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as coverage
		with data.telerad.settings as malformed_settings
	not d.obligations.rate_limit
}

test_a_denial_carries_no_rate_limit if {
	req := json.patch(radiologist_input, [
		put("/resource/study_uid", "1.2.3.999"),
		{"op": "remove", "path": "/resource/assignment"},
	])
	d := access.decision with input as req
		with data.telerad.facilities as facilities
		with data.telerad.radiologists as radiologists
		with data.telerad.coverage as {}
		with data.telerad.settings as limited_settings
	d.allow == false
	not d.obligations.rate_limit
}
