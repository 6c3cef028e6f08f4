//! Tests of plan validation: the documented example, one refusal per rule (checking the
//! field path and the node named), defaults, and round trips through the canonical JSON.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn known(capability: &str) -> bool {
    matches!(capability, "set" | "fail" | "agent.webhook")
}

fn parse(plan: &Value) -> Result<Plan, PlanError> {
    Plan::parse(plan, &known)
}

/// Parses `plan`, expecting a refusal at `field` naming `node`; returns the error.
#[track_caller]
fn assert_refused(plan: Value, field: &str, node: Option<&str>) -> PlanError {
    let err = parse(&plan).expect_err("the plan should be refused");
    assert_eq!(err.field, field, "{err}");
    assert_eq!(err.node.as_deref(), node, "{err}");
    err
}

/// The plan from the brief and `docs/PLANS.md`.
fn example() -> Value {
    json!({ "nodes": [
        { "id": "prepare", "type": "task", "capability": "set", "input": { "draft": "v1" } },
        { "id": "review", "type": "hitl", "prompt": "Approve the draft?",
          "responseTypes": ["approval", "rejection", "option", "freeform"],
          "options": [ { "id": "short", "label": "Shorten it" } ],
          "contract": { "facets": ["tone"], "capabilityContract": { "output": "approved draft" } },
          "timeoutSeconds": 86400, "onTimeout": "reject", "onRejection": "fail",
          "next": { "short": "publish" } },
        { "id": "publish", "type": "task", "capability": "agent.webhook",
          "config": { "url": "http://agents.internal/publish" } } ] })
}

/// A plan whose second node (`plan.nodes[1]`) is `node`.
fn second(node: Value) -> Value {
    json!({ "nodes": [ { "id": "prepare", "type": "task", "capability": "set" }, node ] })
}

/// A minimal valid HITL node `review` with `changes` applied; a `null` change removes
/// the field.
fn hitl(changes: Value) -> Value {
    let mut node = json!({ "id": "review", "type": "hitl", "prompt": "Approve?",
                           "responseTypes": ["approval"] });
    apply(&mut node, changes);
    node
}

/// A HITL node `review` offering option `short`, with `changes` applied.
fn hitl_with_option(changes: Value) -> Value {
    let mut node = hitl(json!({ "responseTypes": ["option"],
                                "options": [ { "id": "short", "label": "Shorten it" } ] }));
    apply(&mut node, changes);
    node
}

/// A minimal valid task node `work` with `changes` applied.
fn task(changes: Value) -> Value {
    let mut node = json!({ "id": "work", "type": "task", "capability": "set" });
    apply(&mut node, changes);
    node
}

fn apply(node: &mut Value, changes: Value) {
    if let (Value::Object(node), Value::Object(changes)) = (node, changes) {
        for (key, value) in changes {
            if value.is_null() {
                node.remove(&key);
            } else {
                node.insert(key, value);
            }
        }
    }
}

#[test]
fn the_example_plan_parses_into_its_typed_nodes() {
    let plan = parse(&example()).expect("the example is valid");
    assert_eq!(plan.nodes.len(), 3);
    let NodeKind::Task(prepare) = &plan.nodes[0].kind else {
        panic!("prepare is a task")
    };
    assert_eq!(prepare.capability, "set");
    assert_eq!(
        prepare.input,
        json!({ "draft": "v1" }).as_object().cloned().unwrap()
    );
    let NodeKind::Hitl(review) = &plan.nodes[1].kind else {
        panic!("review is a hitl node")
    };
    assert_eq!(review.prompt, "Approve the draft?");
    assert_eq!(review.response_types, NODE_RESPONSE_TYPES);
    assert_eq!(
        review.options,
        [HitlOption {
            id: "short".into(),
            label: "Shorten it".into()
        }]
    );
    assert_eq!(review.contract.facets, ["tone"]);
    assert_eq!(
        review.contract.capability_contract["output"],
        "approved draft"
    );
    assert_eq!(review.timeout_seconds, Some(86400));
    assert_eq!(review.on_timeout, Some(TimeoutAction::Reject));
    assert_eq!(review.on_rejection, RejectionPolicy::Fail);
    assert_eq!(review.next["short"], "publish");
    let NodeKind::Task(publish) = &plan.nodes[2].kind else {
        panic!("publish is a task")
    };
    assert_eq!(publish.config["url"], "http://agents.internal/publish");
}

#[test]
fn defaults_are_filled_in_for_a_minimal_task_and_hitl_node() {
    let plan = parse(&second(hitl(json!({})))).expect("valid");
    let NodeKind::Task(task) = &plan.nodes[0].kind else {
        panic!("a task")
    };
    assert!(task.input.is_empty() && task.config.is_empty());
    let NodeKind::Hitl(hitl) = &plan.nodes[1].kind else {
        panic!("a hitl node")
    };
    assert!(hitl.options.is_empty() && hitl.next.is_empty());
    assert_eq!(hitl.contract, Contract::default());
    assert_eq!((hitl.timeout_seconds, hitl.on_timeout), (None, None));
    assert_eq!(hitl.on_rejection, RejectionPolicy::Fail);
}

#[test]
fn a_timeout_without_on_timeout_defaults_to_reject() {
    let plan = parse(&second(hitl(json!({ "timeoutSeconds": 60 })))).expect("valid");
    let NodeKind::Hitl(hitl) = &plan.nodes[1].kind else {
        panic!("a hitl node")
    };
    assert_eq!(hitl.on_timeout, Some(TimeoutAction::Reject));
}

#[test]
fn null_optional_fields_mean_their_defaults() {
    let nulls = json!({ "options": null, "contract": null, "timeoutSeconds": null,
                        "onTimeout": null, "onRejection": null, "next": null });
    let mut node = hitl(json!({}));
    if let (Value::Object(node), Value::Object(nulls)) = (&mut node, nulls) {
        node.extend(nulls);
    }
    assert_eq!(parse(&second(node)), parse(&second(hitl(json!({})))));
}

#[test]
fn the_canonical_json_has_every_default_and_omits_an_unset_timeout() {
    let plan = parse(&second(hitl(json!({})))).expect("valid");
    assert_eq!(
        plan.to_json(),
        json!({ "nodes": [
            { "id": "prepare", "type": "task", "capability": "set", "input": {}, "config": {} },
            { "id": "review", "type": "hitl", "prompt": "Approve?",
              "responseTypes": ["approval"], "options": [],
              "contract": { "facets": [], "capabilityContract": {} },
              "onRejection": "fail", "next": {} } ] })
    );
}

#[test]
fn the_example_round_trips_through_its_canonical_json() {
    let plan = parse(&example()).expect("valid");
    assert_eq!(parse(&plan.to_json()), Ok(plan));
}

#[test]
fn node_and_position_find_nodes_by_id() {
    let plan = parse(&example()).expect("valid");
    assert_eq!(plan.position("publish"), Some(2));
    assert_eq!(
        plan.node("review").map(|n| n.kind.type_name()),
        Some("hitl")
    );
    assert_eq!((plan.node("nope"), plan.position("nope")), (None, None));
}

#[test]
fn the_error_message_names_the_field_and_the_node_when_known() {
    let err = assert_refused(
        second(hitl(json!({ "prompt": null }))),
        "plan.nodes[1].prompt",
        Some("review"),
    );
    assert_eq!(
        err.to_string(),
        "plan.nodes[1].prompt (node \"review\"): is required"
    );
    let err = assert_refused(json!({}), "plan.nodes", None);
    assert_eq!(err.to_string(), "plan.nodes: is required");
}

#[test]
fn the_first_error_in_document_order_is_reported() {
    let plan = json!({ "nodes": [
        task(json!({ "id": "a", "capability": "nope" })),
        task(json!({ "id": "a" })),
        task(json!({ "id": "c", "input": 1 })) ] });
    assert_refused(plan, "plan.nodes[0].capability", Some("a"));
    // A malformed node comes before a duplicate id, even one earlier in the list.
    let plan = json!({ "nodes": [ task(json!({ "id": "a" })), task(json!({ "id": "a" })),
                                  task(json!({ "id": "c", "input": 1 })) ] });
    assert_refused(plan, "plan.nodes[2].input", Some("c"));
}

#[test]
fn a_plan_that_is_not_an_object_is_refused() {
    assert_refused(json!([]), "plan", None);
}

#[test]
fn a_plan_without_nodes_or_with_nodes_not_an_array_is_refused() {
    assert_refused(json!({}), "plan.nodes", None);
    assert_refused(json!({ "nodes": {} }), "plan.nodes", None);
}

#[test]
fn a_plan_with_no_nodes_is_refused() {
    assert_refused(json!({ "nodes": [] }), "plan.nodes", None);
}

#[test]
fn a_plan_may_have_500_nodes_but_not_501() {
    let nodes = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| task(json!({ "id": format!("n{i}") })))
            .collect()
    };
    assert!(parse(&json!({ "nodes": nodes(MAX_NODES) })).is_ok());
    let err = assert_refused(json!({ "nodes": nodes(MAX_NODES + 1) }), "plan.nodes", None);
    assert_eq!(err.message, "must list at most 500 nodes, not 501");
}

#[test]
fn an_unknown_field_on_the_plan_is_refused() {
    let mut plan = example();
    plan["steps"] = json!([]);
    let err = assert_refused(plan, "plan.steps", None);
    assert!(err.message.starts_with("unknown field"), "{err}");
}

#[test]
fn a_node_that_is_not_an_object_is_refused() {
    assert_refused(second(json!("review")), "plan.nodes[1]", None);
}

#[test]
fn a_node_without_an_id_is_refused_without_naming_a_node() {
    assert_refused(
        second(hitl(json!({ "id": null }))),
        "plan.nodes[1].id",
        None,
    );
}

#[test]
fn node_ids_outside_the_allowed_characters_or_length_are_refused() {
    let too_long = "x".repeat(MAX_NODE_ID_LEN + 1);
    for id in [
        json!(""),
        json!("a b"),
        json!("é"),
        json!(too_long),
        json!(7),
    ] {
        assert_refused(second(hitl(json!({ "id": id }))), "plan.nodes[1].id", None);
    }
    let longest = "x".repeat(MAX_NODE_ID_LEN);
    for id in ["A-z_0.9", longest.as_str()] {
        assert!(parse(&second(hitl(json!({ "id": id })))).is_ok(), "{id}");
    }
}

#[test]
fn a_duplicate_node_id_is_refused_naming_the_first_node_with_it() {
    let plan = json!({ "nodes": [ task(json!({})), hitl(json!({})), task(json!({})) ] });
    let err = assert_refused(plan, "plan.nodes[2].id", Some("work"));
    assert_eq!(err.message, "duplicates the id of plan.nodes[0]");
}

#[test]
fn a_node_without_a_type_or_with_an_unknown_type_is_refused() {
    for kind in [json!(null), json!("agent"), json!(1)] {
        assert_refused(
            second(hitl(json!({ "type": kind }))),
            "plan.nodes[1].type",
            Some("review"),
        );
    }
}

#[test]
fn a_task_without_a_capability_is_refused() {
    for capability in [json!(null), json!(""), json!(["set"])] {
        let node = task(json!({ "capability": capability }));
        assert_refused(second(node), "plan.nodes[1].capability", Some("work"));
    }
}

#[test]
fn a_task_naming_an_unknown_capability_is_refused() {
    let err = assert_refused(
        second(task(json!({ "capability": "agent.webhok" }))),
        "plan.nodes[1].capability",
        Some("work"),
    );
    assert_eq!(err.message, "is not a known capability");
}

#[test]
fn task_input_and_config_must_be_objects() {
    for field in ["input", "config"] {
        let node = task(json!({ field: ["x"] }));
        assert_refused(
            second(node),
            &format!("plan.nodes[1].{field}"),
            Some("work"),
        );
    }
}

#[test]
fn a_hitl_field_on_a_task_node_is_refused_as_unknown() {
    let err = assert_refused(
        second(task(json!({ "prompt": "Approve?" }))),
        "plan.nodes[1].prompt",
        Some("work"),
    );
    assert_eq!(
        err.message,
        "unknown field; a task node has only: id, type, capability, input, config"
    );
}

#[test]
fn a_misspelled_field_like_on_rejections_is_refused() {
    let node = hitl(json!({ "onRejections": "continue" }));
    assert_refused(second(node), "plan.nodes[1].onRejections", Some("review"));
}

#[test]
fn an_unknown_field_with_an_awkward_name_is_quoted_in_the_path() {
    let node = hitl(json!({ "on rejection": "continue" }));
    assert_refused(
        second(node),
        "plan.nodes[1][\"on rejection\"]",
        Some("review"),
    );
}

#[test]
fn a_hitl_node_without_a_prompt_or_with_a_blank_one_is_refused() {
    for prompt in [json!(null), json!(""), json!("  "), json!(3)] {
        let node = hitl(json!({ "prompt": prompt }));
        assert_refused(second(node), "plan.nodes[1].prompt", Some("review"));
    }
}

#[test]
fn response_types_are_required_and_must_be_a_non_empty_array() {
    for types in [json!(null), json!([]), json!("approval")] {
        let node = hitl(json!({ "responseTypes": types }));
        assert_refused(second(node), "plan.nodes[1].responseTypes", Some("review"));
    }
}

#[test]
fn an_unknown_response_type_is_refused_with_the_allowed_values() {
    let node = hitl(json!({ "responseTypes": ["approval", "approve"] }));
    let err = assert_refused(
        second(node),
        "plan.nodes[1].responseTypes[1]",
        Some("review"),
    );
    assert_eq!(
        err.message,
        "must be one of: approval, rejection, option, freeform"
    );
}

#[test]
fn a_repeated_response_type_is_refused() {
    let node = hitl(json!({ "responseTypes": ["approval", "freeform", "approval"] }));
    let err = assert_refused(
        second(node),
        "plan.nodes[1].responseTypes[2]",
        Some("review"),
    );
    assert_eq!(err.message, "duplicates plan.nodes[1].responseTypes[0]");
}

#[test]
fn options_are_required_when_option_is_a_response_type() {
    for options in [json!(null), json!([])] {
        let node = hitl_with_option(json!({ "options": options }));
        assert_refused(second(node), "plan.nodes[1].options", Some("review"));
    }
}

#[test]
fn the_design_documents_create_run_example_parses_with_options_but_no_option_response_type() {
    // DESIGN.md's "Creating a run" offers an option without the `option` response type.
    let mut plan = example();
    plan["nodes"][1]["responseTypes"] = json!(["approval", "rejection", "freeform"]);
    plan["nodes"][1]["next"] = Value::Null;
    let parsed = Plan::parse(&plan, &|_| true).unwrap();
    let NodeKind::Hitl(review) = &parsed.nodes[1].kind else {
        panic!("hitl")
    };
    assert_eq!(review.options.len(), 1);
}

#[test]
fn options_must_be_objects_with_a_non_empty_id_and_label_and_nothing_else() {
    let cases = [
        (json!("short"), "plan.nodes[1].options[0]"),
        (
            json!({ "label": "Shorten it" }),
            "plan.nodes[1].options[0].id",
        ),
        (
            json!({ "id": "", "label": "Shorten it" }),
            "plan.nodes[1].options[0].id",
        ),
        (json!({ "id": "short" }), "plan.nodes[1].options[0].label"),
        (
            json!({ "id": "short", "label": " " }),
            "plan.nodes[1].options[0].label",
        ),
        (
            json!({ "id": "short", "label": "x", "value": 1 }),
            "plan.nodes[1].options[0].value",
        ),
    ];
    for (option, field) in cases {
        let node = hitl_with_option(json!({ "options": [option] }));
        assert_refused(second(node), field, Some("review"));
    }
    let node = hitl_with_option(json!({ "options": "short" }));
    assert_refused(second(node), "plan.nodes[1].options", Some("review"));
}

#[test]
fn a_repeated_option_id_is_refused() {
    let options = json!([ { "id": "a", "label": "A" }, { "id": "b", "label": "B" },
                          { "id": "a", "label": "A again" } ]);
    let node = hitl_with_option(json!({ "options": options }));
    let err = assert_refused(second(node), "plan.nodes[1].options[2].id", Some("review"));
    assert_eq!(err.message, "duplicates the id of plan.nodes[1].options[0]");
}

#[test]
fn a_contract_must_be_an_object_of_string_facets_and_a_capability_contract() {
    let cases = [
        (json!("tone"), "plan.nodes[1].contract"),
        (json!({ "facet": ["tone"] }), "plan.nodes[1].contract.facet"),
        (json!({ "facets": "tone" }), "plan.nodes[1].contract.facets"),
        (
            json!({ "facets": ["tone", 2] }),
            "plan.nodes[1].contract.facets[1]",
        ),
        (
            json!({ "capabilityContract": [] }),
            "plan.nodes[1].contract.capabilityContract",
        ),
    ];
    for (contract, field) in cases {
        let node = hitl(json!({ "contract": contract }));
        assert_refused(second(node), field, Some("review"));
    }
}

#[test]
fn a_timeout_outside_one_second_to_one_year_is_refused() {
    for seconds in [
        json!(0),
        json!(-1),
        json!(31_536_001),
        json!(1.5),
        json!("60"),
    ] {
        let node = hitl(json!({ "timeoutSeconds": seconds }));
        assert_refused(second(node), "plan.nodes[1].timeoutSeconds", Some("review"));
    }
    for seconds in [1, MAX_TIMEOUT_SECONDS] {
        assert!(parse(&second(hitl(json!({ "timeoutSeconds": seconds })))).is_ok());
    }
}

#[test]
fn on_timeout_without_timeout_seconds_is_refused() {
    let node = hitl(json!({ "onTimeout": "approve" }));
    assert_refused(second(node), "plan.nodes[1].onTimeout", Some("review"));
}

#[test]
fn an_unknown_on_timeout_or_on_rejection_is_refused_with_the_allowed_values() {
    let node = hitl(json!({ "timeoutSeconds": 60, "onTimeout": "ignore" }));
    let err = assert_refused(second(node), "plan.nodes[1].onTimeout", Some("review"));
    assert_eq!(err.message, "must be one of: reject, approve, cancel");
    let node = hitl(json!({ "onRejection": "Fail" }));
    let err = assert_refused(second(node), "plan.nodes[1].onRejection", Some("review"));
    assert_eq!(err.message, "must be one of: fail, cancel, continue");
}

#[test]
fn next_must_be_an_object() {
    let node = hitl_with_option(json!({ "next": ["prepare"] }));
    assert_refused(second(node), "plan.nodes[1].next", Some("review"));
}

#[test]
fn a_next_key_that_is_not_an_option_id_is_refused() {
    let node = hitl_with_option(json!({ "next": { "long": "prepare" } }));
    let err = assert_refused(second(node), "plan.nodes[1].next.long", Some("review"));
    assert_eq!(err.message, "is not an option id of this node");
}

#[test]
fn a_next_target_that_is_not_a_string_is_refused() {
    let node = hitl_with_option(json!({ "next": { "short": 0 } }));
    assert_refused(second(node), "plan.nodes[1].next.short", Some("review"));
}

#[test]
fn a_next_target_naming_its_own_node_is_refused() {
    let node = hitl_with_option(json!({ "next": { "short": "review" } }));
    assert_refused(second(node), "plan.nodes[1].next.short", Some("review"));
}

#[test]
fn a_next_target_that_names_no_node_is_refused_with_the_node_named() {
    let mut plan = example();
    plan["nodes"][1]["next"] = json!({ "short": "pubish" });
    let err = assert_refused(plan, "plan.nodes[1].next.short", Some("review"));
    assert_eq!(err.message, "names no node of this plan");
}

#[test]
fn a_next_target_may_route_backwards() {
    let node = hitl_with_option(json!({ "next": { "short": "prepare" } }));
    assert!(parse(&second(node)).is_ok());
}

/// Random material that `build` turns into a valid plan.
#[derive(Debug, Clone)]
struct RawNode {
    suffix: String,
    hitl: bool,
    text: String,
    input: Vec<(String, i64)>,
    types: Vec<ResponseType>,
    options: usize,
    routes: Vec<(usize, usize)>,
    facets: Vec<String>,
    timeout: Option<(u64, TimeoutAction)>,
    on_rejection: RejectionPolicy,
}

prop_compose! {
    fn arb_raw_node()(
        suffix in "[A-Za-z0-9_.-]{0,8}",
        hitl in any::<bool>(),
        text in "\\PC{1,12}",
        input in proptest::collection::vec(("[a-z]{1,5}", any::<i64>()), 0..3),
        types in proptest::sample::subsequence(&NODE_RESPONSE_TYPES[..], 1..=4).prop_shuffle(),
        options in 1usize..4,
        routes in proptest::collection::vec((0usize..4, 0usize..8), 0..4),
        facets in proptest::collection::vec("\\PC{0,6}", 0..3),
        timeout in proptest::option::of(
            (1..=MAX_TIMEOUT_SECONDS, proptest::sample::select(TimeoutAction::ALL)),
        ),
        on_rejection in proptest::sample::select(RejectionPolicy::ALL),
    ) -> RawNode {
        RawNode { suffix, hitl, text, input, types, options, routes, facets, timeout, on_rejection }
    }
}

/// Turns random material into a valid plan: ids made unique by their index, options
/// only with the `option` response type, routes only to other nodes.
fn build(raw: &[RawNode]) -> Plan {
    let ids: Vec<String> = raw
        .iter()
        .enumerate()
        .map(|(i, r)| format!("n{i}{}", r.suffix))
        .collect();
    let text = |r: &RawNode| format!("x{}", r.text);
    let nodes = raw.iter().enumerate().map(|(i, r)| {
        let kind = if !r.hitl {
            NodeKind::Task(TaskNode {
                capability: "set".into(),
                input: r.input.iter().map(|(k, v)| (k.clone(), json!(v))).collect(),
                config: [("note".to_owned(), json!(text(r)))].into_iter().collect(),
            })
        } else {
            let with_options = r.types.contains(&ResponseType::Option);
            let options: Vec<HitlOption> = (0..if with_options { r.options } else { 0 })
                .map(|k| HitlOption {
                    id: format!("o{k}"),
                    label: text(r),
                })
                .collect();
            let next = r
                .routes
                .iter()
                .filter(|(k, _)| *k < options.len() && raw.len() > 1)
                .map(|(k, t)| {
                    (
                        format!("o{k}"),
                        ids[(i + 1 + t % (raw.len() - 1)) % raw.len()].clone(),
                    )
                })
                .collect();
            NodeKind::Hitl(HitlNode {
                prompt: text(r),
                response_types: r.types.clone(),
                options,
                contract: Contract {
                    facets: r.facets.clone(),
                    capability_contract: Map::new(),
                },
                timeout_seconds: r.timeout.map(|(s, _)| s),
                on_timeout: r.timeout.map(|(_, a)| a),
                on_rejection: r.on_rejection,
                next,
                assignees: None,
                approvals: None,
                follow_up: None,
            })
        };
        Node {
            id: ids[i].clone(),
            kind,
        }
    });
    Plan {
        nodes: nodes.collect(),
    }
}

proptest! {
    #[test]
    fn every_valid_plan_round_trips_through_its_canonical_json(
        raw in proptest::collection::vec(arb_raw_node(), 1..8)
    ) {
        let plan = build(&raw);
        prop_assert_eq!(parse(&plan.to_json()), Ok(plan.clone()));
        let text = plan.to_json().to_string();
        let reread: Value = serde_json::from_str(&text).expect("canonical json is json");
        prop_assert_eq!(parse(&reread), Ok(plan));
    }

    #[test]
    fn a_plan_with_one_field_replaced_by_junk_is_parsed_or_refused_without_panicking(
        raw in proptest::collection::vec(arb_raw_node(), 1..4),
        which_node in any::<prop::sample::Index>(),
        which_field in any::<prop::sample::Index>(),
        junk in prop_oneof![Just(json!(null)), Just(json!(-1)), Just(json!("")),
                            Just(json!([])), Just(json!({})), Just(json!([{}]))],
    ) {
        let mut value = build(&raw).to_json();
        let node = &mut value["nodes"][which_node.index(raw.len())];
        if let Value::Object(fields) = node {
            let keys: Vec<String> = fields.keys().cloned().collect();
            let key = which_field.get(&keys).clone();
            fields.insert(key, junk);
        }
        if let Err(err) = parse(&value) {
            prop_assert!(err.field.starts_with("plan.nodes["), "{}", err);
        }
    }
}

#[test]
fn every_example_plan_in_the_plans_guide_parses_and_round_trips() {
    let guide = include_str!("../../../docs/PLANS.md");
    let plans: Vec<Value> = guide
        .split("```json")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|block| serde_json::from_str(block).expect("each json block is json"))
        .filter(|value: &Value| value.get("nodes").is_some())
        .collect();
    assert_eq!(plans.len(), 4);
    for value in plans {
        let plan = parse(&value).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(parse(&plan.to_json()), Ok(plan));
    }
}

/// What a `hitl` node may accept: every response type but `edit` (for tool approvals).
const NODE_RESPONSE_TYPES: [ResponseType; 4] = [
    ResponseType::Approval,
    ResponseType::Rejection,
    ResponseType::Option,
    ResponseType::Freeform,
];

#[test]
fn a_hitl_node_cannot_accept_edit_which_only_a_tool_approval_has() {
    let plan = serde_json::json!({ "nodes": [ { "id": "review", "type": "hitl", "prompt": "?",
                                                "responseTypes": ["approval", "edit"] } ] });
    let e = Plan::parse(&plan, &|_| true).unwrap_err();
    assert_eq!(e.field, "plan.nodes[0].responseTypes[1]");
    assert_eq!(
        e.message,
        "must be one of: approval, rejection, option, freeform"
    );
}
