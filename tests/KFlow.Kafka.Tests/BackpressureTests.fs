// Tests for src/KFlow.Kafka/Backpressure.fs: the gate as a pure state machine with hysteresis.
module KFlow.Kafka.Tests.BackpressureTests

open Expecto
open KFlow.Kafka

let private load messages bytes = { Messages = messages; Bytes = bytes }
let private gate = Gate.create 100L 1000L 0.5

/// Runs the gate over a sequence of loads from open; returns the states after each.
let private states (loads: Load list) =
    loads |> List.scan (fun closed l -> Gate.next l closed gate) false |> List.tail

let tests =
    testList "Backpressure" [
        test "a gate closes at either limit and reopens only at both resume thresholds" {
            let loads = [
                load 10L 10L // open
                load 100L 10L // messages limit: closes
                load 80L 10L // still above 50: stays closed
                load 50L 600L // bytes above 500: stays closed
                load 50L 500L // both at the thresholds: reopens
                load 99L 999L // below both limits: stays open
                load 20L 1000L // bytes limit: closes
                load 0L 0L // reopens
            ]

            Expect.equal (states loads) [ false; true; true; true; false; false; true; false ] "hysteresis"
        }

        test "between the thresholds the state depends only on where the load came from" {
            let between = load 70L 700L
            Expect.isFalse (Gate.next between false gate) "an open gate stays open"
            Expect.isTrue (Gate.next between true gate) "a closed gate stays closed"
        }

        test "a message fits while both limits hold after it, and a lone message always fits" {
            Expect.isTrue (Gate.fits 10L (load 99L 990L) gate) "exactly at both limits"
            Expect.isFalse (Gate.fits 11L (load 99L 990L) gate) "one byte over"
            Expect.isFalse (Gate.fits 0L (load 100L 0L) gate) "one message over"
            Expect.isTrue (Gate.fits 5000L (load 0L 0L) gate) "larger than MaxBytes but alone"
        }

        testProperty
            "an admitted message never takes the load past a limit unless it is alone"
            (fun (m: uint16) (b: uint16) (size: uint16) ->
                let l = load (int64 m) (int64 b)
                let size = int64 size

                not (Gate.fits size l gate)
                || l.Messages = 0L
                || (l.Messages + 1L <= gate.MaxMessages && l.Bytes + size <= gate.MaxBytes))

        testProperty
            "a gate never flips at a load strictly between the resume threshold and the limit"
            (fun (m: byte) (closed: bool) ->
                let l = load (51L + int64 (m % 49uy)) 0L
                Gate.next l closed gate = closed)
    ]
