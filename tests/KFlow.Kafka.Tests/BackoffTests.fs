// Tests for src/KFlow.Kafka/Backoff.fs: the delays double from First, stop at Max, and the jitter
// only shortens them.
module KFlow.Kafka.Tests.BackoffTests

open System
open Expecto
open KFlow.Kafka

let private ms (n: float) = TimeSpan.FromMilliseconds n

let tests =
    testList "Backoff" [
        test "delays start at First and double up to Max" {
            let backoff = {
                First = ms 100.
                Max = ms 1000.
                Jitter = 0.2
            }

            let delays = [ for attempt in 1..6 -> Backoff.delay attempt backoff ]
            Expect.equal delays [ ms 100.; ms 200.; ms 400.; ms 800.; ms 1000.; ms 1000. ] "doubling, capped"
        }

        test "jitter shortens a delay by at most its fraction and never passes Max" {
            let backoff = {
                First = ms 100.
                Max = ms 1000.
                Jitter = 0.2
            }

            Expect.equal (Backoff.jittered 0. 2 backoff) (ms 200.) "no draw, no change"
            Expect.equal (Backoff.jittered 0.5 2 backoff) (ms 180.) "half the jitter: 10 % shorter"
            Expect.equal (Backoff.jittered 1. 9 backoff) (ms 800.) "the cap shortened by at most 20 %"
            Expect.equal (Backoff.jittered 7. 9 backoff) (ms 800.) "a draw out of range is clamped"
        }

        test "a jitter outside [0, 1] is refused, naming the setting" {
            Expect.throwsC
                (fun () -> Backoff.validate "OnFailure" { Backoff.defaults with Jitter = 1.5 } |> ignore)
                (fun e -> Expect.stringContains e.Message "OnFailure.Jitter" "names Jitter")
        }

        test "the defaults are 1 s doubling to 30 s with 20 % jitter" {
            Expect.equal
                Backoff.defaults
                {
                    First = ms 1000.
                    Max = ms 30000.
                    Jitter = 0.2
                }
                "defaults"
        }

        test "a huge attempt number stays at Max" {
            Expect.equal (Backoff.delay Int32.MaxValue Backoff.defaults) Backoff.defaults.Max "capped"
        }

        test "a non-positive First or a Max below First is refused, naming the setting" {
            Expect.throwsC
                (fun () ->
                    Backoff.validate "OnFailure" {
                        Backoff.defaults with
                            First = TimeSpan.Zero
                            Max = ms 1.
                    }
                    |> ignore)
                (fun e -> Expect.stringContains e.Message "OnFailure.First" "names First")

            Expect.throwsC
                (fun () ->
                    Backoff.validate "OnFailure" {
                        Backoff.defaults with
                            First = ms 10.
                            Max = ms 1.
                    }
                    |> ignore)
                (fun e -> Expect.stringContains e.Message "OnFailure.Max" "names Max")
        }
    ]
