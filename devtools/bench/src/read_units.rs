//! DynamoDB read units of a read call, from its request and the items its answer carries: what on-demand capacity would charge for it.
//!
//! A read costs one unit per started 4 KB when strongly consistent, half that when
//! eventually consistent, and twice that inside a transaction; a GetItem of an item that
//! is not there still costs the smallest read. A Query adds up the sizes of the items it
//! returns before rounding; a BatchGetItem rounds each item on its own. Item sizes follow
//! the same rules as the write units' ([`crate::write_units::item_size`]). Counted in half
//! units, so an eventually consistent read stays a whole number.

use serde_json::Value;

use crate::write_units::item_size;

/// Bytes in a read unit.
const UNIT_BYTES: usize = 4096;

/// Half read units of a DynamoDB call, from its operation, its JSON request and its JSON
/// answer; 0 for a call that reads nothing.
pub fn half_units_of_call(operation: &str, request: &[u8], answer: &[u8]) -> u64 {
    let (Ok(request), Ok(answer)) = (serde_json::from_slice::<Value>(request), serde_json::from_slice::<Value>(answer))
    else {
        return 0;
    };
    let consistent = request["ConsistentRead"].as_bool().unwrap_or(false);
    let half_units = |bytes: usize, consistent: bool| {
        let units = bytes.div_ceil(UNIT_BYTES).max(1) as u64;
        if consistent {
            2 * units
        } else {
            units
        }
    };
    match operation {
        "GetItem" => half_units(item_size(&answer["Item"]), consistent),
        "Query" | "Scan" => {
            let items = answer["Items"].as_array().into_iter().flatten();
            half_units(items.map(item_size).sum(), consistent)
        }
        "BatchGetItem" => {
            let consistent_of =
                |table: &str| request["RequestItems"][table]["ConsistentRead"].as_bool().unwrap_or(false);
            answer["Responses"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(table, items)| {
                    let consistent = consistent_of(table);
                    items.as_array().into_iter().flatten().map(move |item| half_units(item_size(item), consistent))
                })
                .sum()
        }
        "TransactGetItems" => answer["Responses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|response| 2 * half_units(item_size(&response["Item"]), true))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_consistent_get_is_a_unit_per_started_4_kb_and_an_eventual_one_half() {
        let item = json!({"Item": {"pk": {"S": "RUN#1"}, "document": {"S": "x".repeat(5_000)}}});
        let consistent = json!({"Key": {}, "ConsistentRead": true});
        assert_eq!(half_units_of_call("GetItem", consistent.to_string().as_bytes(), item.to_string().as_bytes()), 4);
        assert_eq!(half_units_of_call("GetItem", b"{\"Key\": {}}", item.to_string().as_bytes()), 2);
        // Nothing there still costs the smallest read.
        assert_eq!(half_units_of_call("GetItem", b"{\"Key\": {}}", b"{}"), 1);
    }

    #[test]
    fn a_query_adds_its_items_up_before_rounding_and_a_write_reads_nothing() {
        let small = json!({"pk": {"S": "a"}, "v": {"S": "y".repeat(1_000)}});
        let answer = json!({"Items": [small, small, small]});
        assert_eq!(half_units_of_call("Query", b"{}", answer.to_string().as_bytes()), 1);
        assert_eq!(half_units_of_call("PutItem", b"{}", b"{}"), 0);
        assert_eq!(half_units_of_call("GetItem", b"not json", b"{}"), 0);
    }
}
