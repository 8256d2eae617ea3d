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

        test "a stall is reported once the load has not fallen for the wait, and the wait restarts" {
            let after = 100L
            let s0 = Stall.start 0L
            let s1, stalled1 = Stall.watch 10L 500L after s0 // first observation
            let s2, stalled2 = Stall.watch 90L 500L after s1 // no progress, not long enough
            let s3, stalled3 = Stall.watch 110L 500L after s2 // no progress for 100 ms
            let s4, stalled4 = Stall.watch 150L 500L after s3 // the wait restarted at 110
            let _, stalled5 = Stall.watch 300L 499L after s4 // progress

            Expect.equal
                [ stalled1; stalled2; stalled3; stalled4; stalled5 ]
                [ false; false; true; false; false ]
                "stalled once, then progress"
        }

        testProperty "a falling load is never a stall" (fun (loads: uint16 list) ->
            let falling = loads |> List.sortDescending |> List.distinct

            falling
            |> List.mapi (fun i l -> int64 (i * 1000), int64 l)
            |> List.fold
                (fun (s, any) (now, l) ->
                    let s', stalled = Stall.watch now l 1L s
                    s', any || stalled)
                (Stall.start 0L, false)
            |> snd
            |> not)
    ]
